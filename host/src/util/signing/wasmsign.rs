//! The WebAssembly tool-conventions signature format (`Signatures.md`, as `wasmsign2` writes it):
//! finding a signature embedded in a component's first custom section `signature`, checking a
//! signature's structure before the `wasmsign2` crate allocates anything it claims, verifying a
//! component against one key, and signing (embedded or detached).

use std::io::Cursor;

use anyhow::{Context, bail};
use ed25519_dalek::{SigningKey, VerifyingKey};
use wasmsign2::WSError;

use super::keys::WASMSIGN2_PUBLIC_KEY_ID;

/// The custom section an embedded signature lives in (the component's first section).
pub const SECTION_NAME: &str = "signature";
/// The largest wasmsign2 signature read, embedded or detached: one signature is about 100 bytes,
/// and the limit keeps the ed25519 checks a hostile one could ask for to about a thousand.
pub const MAX_SIGNATURE_SIZE: usize = 64 * 1024;
/// Limits of the format, as the `wasmsign2` crate enforces them.
const MAX_HASHES: u32 = 64;
const MAX_SIGNATURES: u32 = 256;
/// The first byte of a raw wasmsign2 secret key, before the seed and the public key.
const SECRET_KEY_ID: u8 = 0x81;
/// `\0asm`, then a version (module or component) and a layer: 8 bytes before the first section.
const HEADER_LEN: usize = 8;

/// The payload of the embedded signature section, if the component's first section is one.
/// An error when that section is there but truncated or over [`MAX_SIGNATURE_SIZE`].
pub fn embedded(bytes: &[u8]) -> anyhow::Result<Option<&[u8]>> {
    if bytes.len() < HEADER_LEN || !bytes.starts_with(b"\0asm") {
        return Ok(None);
    }
    let mut reader = Reader(&bytes[HEADER_LEN..]);
    if reader.byte() != Some(0) {
        return Ok(None);
    }
    let Some(size) = reader.leb32() else { return Ok(None) };
    let section_start = reader.0;
    let Some(name_len) = reader.leb32() else { return Ok(None) };
    if reader.0.get(..name_len as usize) != Some(SECTION_NAME.as_bytes()) {
        return Ok(None);
    }
    let name_field = section_start.len() - reader.0.len() + name_len as usize;
    let section = section_start.get(..size as usize).context(
        "the component's `signature` section runs past the end of the component: it is truncated; \
         sign the component again",
    )?;
    let payload = section.get(name_field..).context(
        "the component's `signature` section is shorter than its own name: sign the component again",
    )?;
    check_structure(payload).context("in the component's embedded `signature` section")?;
    Ok(Some(payload))
}

/// Whether `bytes` look like a wasmsign2 signature (its version byte) rather than text.
pub fn looks_binary(bytes: &[u8]) -> bool {
    bytes.first() == Some(&1)
}

/// Checks `signature` (embedded in `bytes` when `detached` is `None`) with `key`.
pub fn verify(key: &VerifyingKey, bytes: &[u8], detached: Option<&[u8]>) -> anyhow::Result<()> {
    let (signature, place) = match detached {
        Some(signature) => (signature, "detached wasmsign2 signature"),
        None => (
            embedded(bytes)?.context("the component has no embedded `signature` section")?,
            "embedded wasmsign2 signature",
        ),
    };
    check_structure(signature).with_context(|| format!("the {place} cannot be read"))?;
    let mut raw = vec![WASMSIGN2_PUBLIC_KEY_ID];
    raw.extend_from_slice(key.as_bytes());
    let public = wasmsign2::PublicKey::from_bytes(&raw).map_err(|e| anyhow::anyhow!("{e}"))?;
    public.verify(&mut Cursor::new(bytes), detached).map_err(|error| match error {
        WSError::VerificationFailed => anyhow::anyhow!(
            "the {place} was not made with the `--trusted-key` key, or the component changed after \
             signing: sign this exact component with the trusted key's private half \
             (`wasmsign2 sign`, or `echo-host sign --format wasmsign2`)"
        ),
        WSError::UnsupportedModuleType | WSError::Eof | WSError::IOError(_) => {
            anyhow::anyhow!("the {place} is for WebAssembly, and the component is not WebAssembly")
        }
        other => anyhow::anyhow!("the {place} cannot be read ({other}): sign the component again"),
    })
}

/// Signs `bytes` with `key`: returns the component to publish (with the signature embedded as
/// its first section, or, when `detached`, the input unchanged) and the signature itself.
pub fn sign(key: &SigningKey, bytes: &[u8], detached: bool) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    check_sections(bytes)?;
    if detached && embedded(bytes)?.is_some() {
        bail!(
            "it already has an embedded signature, which a detached one would have to cover: sign \
             it embedded (without `--detached`), or take that signature out first (`wasmsign2 detach`)"
        );
    }
    let mut raw = vec![SECRET_KEY_ID];
    raw.extend_from_slice(&key.to_keypair_bytes());
    let secret = wasmsign2::SecretKey::from_bytes(&raw).map_err(|e| anyhow::anyhow!("{e}"))?;
    let module = wasmsign2::Module::deserialize(&mut Cursor::new(bytes))
        .map_err(|e| anyhow::anyhow!("wasmsign2 cannot read it: {e}"))?;
    let (module, signature) = secret
        .sign_multi(module, None, detached, false)
        .map_err(|e| anyhow::anyhow!("wasmsign2 cannot sign it: {e}"))?;
    let signed = if detached {
        bytes.to_vec()
    } else {
        let mut out = Vec::with_capacity(bytes.len() + signature.len() + 16);
        module.serialize(&mut out).map_err(|e| anyhow::anyhow!("cannot write the signed component: {e}"))?;
        out
    };
    // wasmsign2 hashes the sections as it re-encodes them: a detached signature over a component
    // whose section sizes are not minimally encoded would not match the bytes on disk.
    verify(&key.verifying_key(), &signed, detached.then_some(signature.as_slice()))
        .context("the new signature does not verify: sign it embedded (without `--detached`)")?;
    Ok((signed, signature))
}

/// Every section of `bytes` fits in it, so that `wasmsign2` allocates no more than the file holds.
fn check_sections(bytes: &[u8]) -> anyhow::Result<()> {
    if bytes.len() < HEADER_LEN || !bytes.starts_with(b"\0asm") {
        bail!("it is not WebAssembly (no `\\0asm` header)");
    }
    let mut reader = Reader(&bytes[HEADER_LEN..]);
    while !reader.0.is_empty() {
        let offset = bytes.len() - reader.0.len();
        let id = reader.byte().filter(|id| id & 0x80 == 0);
        let payload = id.and_then(|_| reader.slice());
        // A custom section's name (id 0) is read into memory too: it must fit in its section.
        let fits = match (id, payload) {
            (Some(0), Some(payload)) => Reader(payload).slice().is_some(),
            (_, payload) => payload.is_some(),
        };
        if !fits {
            bail!("the section at byte {offset} is truncated or malformed");
        }
    }
    Ok(())
}

/// The signature's structure (`Signatures.md`): version, content type, hash function, then up to
/// 64 sets of hashes and up to 256 signatures each, every length within what holds it.
fn check_structure(signature: &[u8]) -> anyhow::Result<()> {
    if signature.len() > MAX_SIGNATURE_SIZE {
        bail!(
            "it is {} bytes, over the {} KiB a signature may be: sign with fewer keys",
            signature.len(),
            MAX_SIGNATURE_SIZE / 1024
        );
    }
    let mut reader = Reader(signature);
    let truncated = || anyhow::anyhow!("it is truncated or malformed: sign the component again");
    let [version, content, hash] = [reader.byte(), reader.byte(), reader.byte()];
    match (version, content, hash) {
        (Some(1), Some(1), Some(1)) => {}
        (Some(1), Some(1), Some(other)) => bail!("its hash function 0x{other:02x} is not SHA-256 (0x01)"),
        (Some(1), Some(other), _) => {
            bail!("its content type 0x{other:02x} is not a WebAssembly module (0x01)")
        }
        (Some(other), _, _) => {
            bail!("its format version 0x{other:02x} is not 0x01, the one `Signatures.md` defines")
        }
        _ => return Err(truncated()),
    }
    let sets = reader.leb32().ok_or_else(truncated)?;
    if sets > MAX_HASHES {
        bail!("it has {sets} sets of hashes, over the {MAX_HASHES} the format allows");
    }
    for _ in 0..sets {
        let mut set = Reader(reader.slice().ok_or_else(truncated)?);
        let hashes = set.leb32().filter(|&n| n <= MAX_HASHES).ok_or_else(truncated)?;
        set.take(hashes as usize * 32).ok_or_else(truncated)?;
        let signatures = set.leb32().filter(|&n| n <= MAX_SIGNATURES).ok_or_else(truncated)?;
        for _ in 0..signatures {
            let mut one = Reader(set.slice().ok_or_else(truncated)?);
            one.slice().and_then(|_| one.byte()).and_then(|_| one.slice()).ok_or_else(truncated)?;
        }
    }
    Ok(())
}

/// Reads the format's pieces, never past the end: every method answers `None` instead.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    /// An unsigned LEB128 of at most 5 bytes, as `wasmsign2` reads it (bits past 32 dropped).
    fn leb32(&mut self) -> Option<u32> {
        let mut value = 0u32;
        for shift in (0..35).step_by(7) {
            let byte = self.byte()?;
            value |= u32::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if len > self.0.len() {
            return None;
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(taken)
    }

    /// A LEB128 length, then that many bytes.
    fn slice(&mut self) -> Option<&'a [u8]> {
        let len = self.leb32()?;
        self.take(len as usize)
    }
}
