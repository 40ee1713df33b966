//! Ed25519 signatures over components: `keygen`, `sign`, and the check `--trusted-key` makes.
//!
//! Two signature formats, told apart by their content:
//! - echo-host's own: one line of base64 of a 64-byte ed25519 signature over the component's
//!   bytes, detached (`FILE.sig`, `URL.sig`, `OBJECT.sig`, or the `echo-host-signature` header).
//!   Its keys are one line of base64 too: a private key is its 32-byte seed, a public key its 32
//!   bytes. Fits in files, env vars and HTTP headers.
//! - the WebAssembly tool-conventions format (`Signatures.md`, what `wasmsign2` writes), embedded
//!   in the component's first custom section `signature` or detached as binary (`wasmsign2 sign
//!   -S`); in the header, as base64 of that binary.
//!
//! `--trusted-key` reads our public keys, OpenSSH `ssh-ed25519` lines and wasmsign2's key files
//! ([`keys`]); one ed25519 key checks either format. The wasmsign2 side is [`wasmsign`].

mod keys;
pub mod wasmsign;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, VerifyingKey};

pub use keys::{read_private_key, read_public_key};

/// The header an admin upload carries its detached signature in (ours as it is, a wasmsign2 one
/// as base64 of its binary).
pub const SIGNATURE_HEADER: &str = "echo-host-signature";

/// Why a component did not pass `--trusted-key`.
#[derive(Debug)]
pub enum Unverified {
    /// Neither a detached signature nor an embedded `signature` section.
    Missing,
    /// A signature that is unreadable or does not match; the error says which and what to do.
    Bad(anyhow::Error),
}

/// A detached signature, its format found from its content.
enum Detached {
    /// `echo-host sign`'s: base64 of 64 bytes.
    EchoHost(Signature),
    /// wasmsign2's binary (as read from a file, or decoded from the header's base64).
    Wasmsign2(Vec<u8>),
}

fn parse_detached(signature: &[u8]) -> anyhow::Result<Detached> {
    if wasmsign::looks_binary(signature) {
        return Ok(Detached::Wasmsign2(signature.to_vec()));
    }
    let decoded = std::str::from_utf8(signature).ok().and_then(|text| BASE64.decode(text.trim()).ok());
    match decoded {
        Some(bytes) if bytes.len() == 64 => {
            let bytes: [u8; 64] = bytes.try_into().expect("the length is checked above");
            Ok(Detached::EchoHost(Signature::from_bytes(&bytes)))
        }
        Some(bytes) if wasmsign::looks_binary(&bytes) => Ok(Detached::Wasmsign2(bytes)),
        Some(bytes) => bail!(
            "the detached signature is base64 of {} bytes: neither an `echo-host sign` signature \
             (64 bytes) nor a wasmsign2 one (which starts with its version, 0x01); sign the \
             component again",
            bytes.len()
        ),
        None => bail!(
            "the detached signature ({}) is neither an `echo-host sign` signature (one line of \
             base64) nor a wasmsign2 one (binary from `wasmsign2 sign -S`, or its base64 in the \
             `{SIGNATURE_HEADER}` header); sign the component again",
            keys::describe(signature)
        ),
    }
}

/// Checks `bytes` against `key`: with the `detached` signature (either format) when there is
/// one, else with the wasmsign2 signature embedded in the component. When both are there, either
/// one that verifies is enough.
pub fn verify(key: &VerifyingKey, bytes: &[u8], detached: Option<&[u8]>) -> Result<(), Unverified> {
    let embedded = wasmsign::embedded(bytes);
    let Some(detached) = detached else {
        return match embedded {
            Ok(Some(_)) => wasmsign::verify(key, bytes, None).map_err(Unverified::Bad),
            Ok(None) => Err(Unverified::Missing),
            Err(error) => Err(Unverified::Bad(error)),
        };
    };
    let detached_error = match verify_detached(key, bytes, detached) {
        Ok(()) => return Ok(()),
        Err(error) => error,
    };
    match embedded {
        Ok(Some(_)) => wasmsign::verify(key, bytes, None)
            .map_err(|error| Unverified::Bad(anyhow::anyhow!("{detached_error:#}; and {error:#}"))),
        _ => Err(Unverified::Bad(detached_error)),
    }
}

fn verify_detached(key: &VerifyingKey, bytes: &[u8], signature: &[u8]) -> anyhow::Result<()> {
    use ed25519_dalek::Verifier as _;
    match parse_detached(signature)? {
        Detached::EchoHost(signature) => key.verify(bytes, &signature).map_err(|_| {
            anyhow::anyhow!(
                "the `echo-host sign` signature was not made with the `--trusted-key` key, or the \
                 component changed after signing: sign this exact component with the trusted key's \
                 private half (`echo-host sign --key KEY FILE`)"
            )
        }),
        Detached::Wasmsign2(signature) => wasmsign::verify(key, bytes, Some(&signature)),
    }
}

/// `echo-host keygen KEY`: writes the private key to `KEY` (mode 0600) and the public key to `KEY.pub`.
pub fn keygen(key_path: &Path) -> anyhow::Result<PathBuf> {
    if key_path.exists() {
        bail!("`{}` already exists; refusing to overwrite a key", key_path.display());
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    write_private(key_path, &BASE64.encode(seed))?;
    let public_path = sibling(key_path, "pub");
    std::fs::write(&public_path, BASE64.encode(key.verifying_key().as_bytes()) + "\n")
        .with_context(|| format!("cannot write `{}`", public_path.display()))?;
    Ok(public_path)
}

/// `echo-host sign --key KEY FILE`: writes `FILE.sig`.
pub fn sign_file(key_path: &Path, file: &Path) -> anyhow::Result<PathBuf> {
    let key = read_private_key(key_path)?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read `{}`", file.display()))?;
    let signature = key.sign(&bytes);
    let sig_path = sibling(file, "sig");
    std::fs::write(&sig_path, BASE64.encode(signature.to_bytes()) + "\n")
        .with_context(|| format!("cannot write `{}`", sig_path.display()))?;
    Ok(sig_path)
}

/// `echo-host sign --format wasmsign2 --key KEY FILE`: writes the component with the signature
/// embedded to `output` (default `NAME.signed.wasm` beside `FILE`), or with `detached` the
/// binary signature `wasmsign2 sign -S` writes to `output` (default `FILE.sig`), leaving `FILE`
/// as it is. Returns the path written.
pub fn sign_file_wasmsign2(
    key_path: &Path,
    file: &Path,
    output: Option<&Path>,
    detached: bool,
) -> anyhow::Result<PathBuf> {
    let key = read_private_key(key_path)?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read `{}`", file.display()))?;
    let (signed, signature) = wasmsign::sign(&key, &bytes, detached)
        .with_context(|| format!("cannot sign `{}`", file.display()))?;
    let (path, contents) = match (detached, output) {
        (true, output) => (output.map_or_else(|| sibling(file, "sig"), Path::to_path_buf), signature),
        (false, Some(output)) => (output.to_path_buf(), signed),
        (false, None) => (file.with_extension("").with_added_extension("signed.wasm"), signed),
    };
    write_replacing(&path, &contents)?;
    Ok(path)
}

/// Writes `path` through a temporary file renamed into place, so a watcher never reads half of it.
fn write_replacing(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let temporary = sibling(path, "tmp");
    std::fs::write(&temporary, contents)
        .with_context(|| format!("cannot write `{}`", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot write `{}`", path.display()))
}

/// `PATH.ext` (appended, not replacing an extension: `echo.wasm` → `echo.wasm.sig`).
pub fn sibling(path: &Path, ext: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(ext);
    PathBuf::from(name)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("cannot create `{}`", path.display()))?;
    writeln!(file, "{text}").with_context(|| format!("cannot write `{}`", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component: the header of a component (version 0x0d, layer 1), no sections.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    fn bad(result: Result<(), Unverified>) -> String {
        match result {
            Err(Unverified::Bad(error)) => format!("{error:#}"),
            other => panic!("expected a bad signature, got {other:?}"),
        }
    }

    #[test]
    fn keygen_sign_verify_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        let public = keygen(&key).unwrap();
        assert!(keygen(&key).is_err(), "must not overwrite a key");
        let file = dir.path().join("c.wasm");
        std::fs::write(&file, b"component bytes").unwrap();
        let sig = sign_file(&key, &file).unwrap();
        assert_eq!(sig, dir.path().join("c.wasm.sig"));
        let public = read_public_key(&public).unwrap();
        let signature = std::fs::read(&sig).unwrap();
        verify(&public, b"component bytes", Some(&signature)).unwrap();
        assert!(bad(verify(&public, b"other bytes", Some(&signature))).contains("sign this exact component"));
        assert!(bad(verify(&public, b"component bytes", Some(b"not base64!"))).contains("neither"));
        assert!(matches!(verify(&public, b"component bytes", None), Err(Unverified::Missing)));
    }

    #[test]
    fn wasmsign2_embedded_and_detached_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        let public = read_public_key(&keygen(&key).unwrap()).unwrap();
        let file = dir.path().join("c.wasm");
        std::fs::write(&file, EMPTY_COMPONENT).unwrap();

        let signed_path = sign_file_wasmsign2(&key, &file, None, false).unwrap();
        assert_eq!(signed_path, dir.path().join("c.signed.wasm"));
        let signed = std::fs::read(&signed_path).unwrap();
        assert!(wasmsign::embedded(&signed).unwrap().is_some());
        verify(&public, &signed, None).unwrap();
        // One byte changed: the embedded signature no longer matches.
        let mut changed = signed.clone();
        changed.extend_from_slice(&[0, 1, 0]); // a custom section with an empty name, appended
        assert!(bad(verify(&public, &changed, None)).contains("sign this exact component"));

        let sig_path = sign_file_wasmsign2(&key, &file, None, true).unwrap();
        assert_eq!(sig_path, dir.path().join("c.wasm.sig"));
        let detached = std::fs::read(&sig_path).unwrap();
        assert!(wasmsign::looks_binary(&detached));
        verify(&public, EMPTY_COMPONENT, Some(&detached)).unwrap();
        // The header's form: base64 of the binary.
        verify(&public, EMPTY_COMPONENT, Some(BASE64.encode(&detached).as_bytes())).unwrap();
        assert!(bad(verify(&public, &changed[..], Some(&detached))).contains("detached wasmsign2"));
        // A detached signature over a component that already carries one would not cover it.
        assert!(sign_file_wasmsign2(&key, &signed_path, None, true).is_err());
    }

    #[test]
    fn a_malformed_embedded_signature_is_refused_without_reading_past_it() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let (signed, _) = wasmsign::sign(&key, EMPTY_COMPONENT, false).unwrap();
        let public = key.verifying_key();
        // Cut anywhere: a clean refusal, never a panic. Before the section's name is whole there
        // is no signature to speak of; after it, a truncated one.
        let name_end = EMPTY_COMPONENT.len() + 3 + wasmsign::SECTION_NAME.len();
        for cut in EMPTY_COMPONENT.len() + 1..name_end {
            assert!(
                matches!(verify(&public, &signed[..cut], None), Err(Unverified::Missing)),
                "cut at {cut}"
            );
        }
        for cut in name_end..signed.len() {
            let message = bad(verify(&public, &signed[..cut], None));
            assert!(message.contains("sign the component again"), "cut at {cut}: {message}");
        }
        // A section that claims 4 GiB: refused from its size, nothing allocated for it.
        let mut huge = EMPTY_COMPONENT.to_vec();
        huge.extend_from_slice(&[0, 0xff, 0xff, 0xff, 0xff, 0x0f, 9]);
        huge.extend_from_slice(b"signature");
        assert!(bad(verify(&public, &huge, None)).contains("truncated"));
        // A signature claiming 4 GiB of hashes inside a well-formed section.
        let mut payload = vec![1, 1, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f];
        payload.extend_from_slice(&[0; 8]);
        let component = with_signature_section(&payload);
        assert!(bad(verify(&public, &component, None)).contains("truncated or malformed"));
        // Over 64 KiB of signature.
        let component = with_signature_section(&vec![1; 70_000]);
        assert!(bad(verify(&public, &component, None)).contains("over the 64 KiB"));
    }

    fn with_signature_section(payload: &[u8]) -> Vec<u8> {
        let mut contents = vec![9];
        contents.extend_from_slice(b"signature");
        contents.extend_from_slice(payload);
        let mut bytes = EMPTY_COMPONENT.to_vec();
        bytes.push(0);
        let mut len = contents.len() as u32;
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            bytes.push(if len == 0 { byte } else { byte | 0x80 });
            if len == 0 {
                break;
            }
        }
        bytes.extend_from_slice(&contents);
        bytes
    }

    #[test]
    fn every_public_key_format_is_read_and_anything_else_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let signing = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let public = signing.verifying_key();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let ours = write("ours.pub", (BASE64.encode(public.as_bytes()) + "\n").as_bytes());
        let mut blob = Vec::new();
        for part in [&b"ssh-ed25519"[..], public.as_bytes()] {
            blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
            blob.extend_from_slice(part);
        }
        let ssh = write("id.pub", format!("ssh-ed25519 {} me@host\n", BASE64.encode(&blob)).as_bytes());
        let mut raw = vec![1];
        raw.extend_from_slice(public.as_bytes());
        let raw = write("raw.pub", &raw);
        let pem = wasmsign2::PublicKey::from_bytes(&std::fs::read(&raw).unwrap()).unwrap();
        let pem_path = write("key.pem", pem.to_pem().as_bytes());
        let der_path = write("key.der", &pem.to_der());
        for path in [&ours, &ssh, &raw, &pem_path, &der_path] {
            assert_eq!(read_public_key(path).unwrap(), public, "{}", path.display());
        }

        let refused = |bytes: &[u8]| format!("{:#}", read_public_key(&write("bad", bytes)).unwrap_err());
        assert!(refused(b"ssh-rsa AAAAB3NzaC1yc2E me@host").contains("`ssh-rsa`"));
        assert!(refused(b"ssh-ed25519 AAAA me@host").contains("truncated"));
        assert!(refused(b"-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n").contains("private key"));
        assert!(refused(b"aGVsbG8=").contains("base64 of 5 bytes"));
        assert!(refused(&[0xff, 0xfe, 0, 1]).contains("starting 0xfffe0001"));
        assert!(refused(&[0x81; 65]).contains("wasmsign2 secret key"));
        let huge = refused(&vec![b'A'; 100_000]);
        assert!(huge.contains("over 16 KiB"), "{huge}");
        assert!(refused(b"garbage\n").contains("8 bytes starting `garbage`"));
        for message in [refused(b""), refused(b"garbage")] {
            assert!(message.contains("OpenSSH `ssh-ed25519"), "says what is expected: {message}");
        }
    }

    #[test]
    fn wasmsign2_secret_keys_sign_too() {
        let dir = tempfile::tempdir().unwrap();
        let pair = wasmsign2::KeyPair::generate();
        let key = dir.path().join("secret.key");
        std::fs::write(&key, pair.sk.to_bytes()).unwrap();
        let file = dir.path().join("c.wasm");
        std::fs::write(&file, EMPTY_COMPONENT).unwrap();
        let signed = std::fs::read(sign_file_wasmsign2(&key, &file, None, false).unwrap()).unwrap();
        let mut raw = dir.path().join("public.key");
        std::fs::write(&raw, pair.pk.to_bytes()).unwrap();
        verify(&read_public_key(&raw).unwrap(), &signed, None).unwrap();
        raw.set_extension("pem");
        std::fs::write(&raw, pair.sk.to_pem()).unwrap();
        assert!(read_private_key(&raw).is_ok());
    }
}
