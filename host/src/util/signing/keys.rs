//! Reading ed25519 key files in every format the host accepts, each recognised by its content:
//! `echo-host keygen`'s base64 lines, OpenSSH `ssh-ed25519` public keys, and wasmsign2's keys
//! (raw, PEM or DER). A file that is none of those gets an error saying what was found.

use std::io::Read as _;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{SigningKey, VerifyingKey};

/// The first byte of a raw wasmsign2 public key (`wasmsign2 keygen -K`), before its 32 bytes.
pub(super) const WASMSIGN2_PUBLIC_KEY_ID: u8 = 0x01;
/// The first byte of a raw wasmsign2 secret key (`wasmsign2 keygen -k`), before its 64 bytes.
const WASMSIGN2_SECRET_KEY_ID: u8 = 0x81;
/// A key file is a few hundred bytes at most; anything longer is read no further.
const MAX_KEY_FILE: u64 = 16 * 1024;

/// What `--trusted-key` may name, for error messages.
const PUBLIC_FORMATS: &str = "an `echo-host keygen` public key (`KEY.pub`: one line of base64 of 32 bytes), \
     an OpenSSH `ssh-ed25519 AAAA…` line (`ssh-keygen -t ed25519` writes it to `KEY.pub`), \
     or a wasmsign2 public key (`wasmsign2 keygen -K`: raw, PEM or DER)";
/// What `echo-host sign --key` may name, for error messages.
const PRIVATE_FORMATS: &str = "an `echo-host keygen` private key (one line of base64 of 32 bytes) \
     or a wasmsign2 secret key (`wasmsign2 keygen -k`: raw, PEM or DER)";

/// Reads `--trusted-key`: any of [`PUBLIC_FORMATS`], recognised by its content.
pub fn read_public_key(path: &Path) -> anyhow::Result<VerifyingKey> {
    let bytes = read_key_file(path, "`--trusted-key` public key")?;
    parse_public_key(&bytes).with_context(|| {
        format!("`{}` is not an ed25519 public key echo-host reads; give {PUBLIC_FORMATS}", path.display())
    })
}

/// Reads `echo-host sign --key`: any of [`PRIVATE_FORMATS`], recognised by its content.
pub fn read_private_key(path: &Path) -> anyhow::Result<SigningKey> {
    let bytes = read_key_file(path, "`--key` private key")?;
    parse_private_key(&bytes).with_context(|| {
        format!("`{}` is not an ed25519 private key echo-host reads; give {PRIVATE_FORMATS}", path.display())
    })
}

fn read_key_file(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read the {what} `{}`", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read the {what} `{}`", path.display()))?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        bail!(
            "`{}` is over {} KiB, too long for a {what}: is it the right file?",
            path.display(),
            MAX_KEY_FILE / 1024
        );
    }
    Ok(bytes)
}

pub(super) fn parse_public_key(bytes: &[u8]) -> anyhow::Result<VerifyingKey> {
    // The binary formats first: a raw wasmsign2 key may happen to be valid UTF-8.
    match bytes.first() {
        Some(&WASMSIGN2_PUBLIC_KEY_ID) if bytes.len() == 33 => {
            let key = wasmsign2::PublicKey::from_bytes(bytes).map_err(wasmsign2_error)?;
            return verifying_key(&key);
        }
        Some(&WASMSIGN2_SECRET_KEY_ID) if bytes.len() == 65 => {
            bail!("found a wasmsign2 secret key: give its public key (`wasmsign2 keygen -K`) instead")
        }
        // DER starts with 0x30 (a SEQUENCE), which is also `0`: base64 text may start with it.
        Some(0x30) => {
            if let Ok(key) = wasmsign2::PublicKey::from_der(bytes) {
                return verifying_key(&key);
            }
        }
        _ => {}
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| match bytes.first() {
            Some(0x30) => anyhow::anyhow!("found {}, not an ed25519 public key in DER", describe(bytes)),
            _ => anyhow::anyhow!("found {}", describe(bytes)),
        })?
        .trim();
    if text.contains("PRIVATE KEY-----") {
        bail!("found a private key: give the public key (`KEY.pub`) instead");
    }
    if text.starts_with("-----BEGIN") {
        let key = wasmsign2::PublicKey::from_pem(text)
            .map_err(|_| anyhow::anyhow!("found a PEM file that is not an ed25519 public key"))?;
        return verifying_key(&key);
    }
    if let Some(line) = text.lines().map(str::trim).find(|line| !line.is_empty() && !line.starts_with('#'))
        && line.split_whitespace().count() > 1
    {
        return parse_openssh_public_key(line);
    }
    let decoded = BASE64.decode(text).map_err(|_| anyhow::anyhow!("found {}", describe(bytes)))?;
    let bytes: [u8; 32] = decoded.try_into().map_err(|decoded: Vec<u8>| {
        anyhow::anyhow!("found one line of base64 of {} bytes, where a public key is 32", decoded.len())
    })?;
    VerifyingKey::from_bytes(&bytes).context("found 32 bytes that are not a valid ed25519 public key")
}

/// One OpenSSH public key line: `ssh-ed25519 BASE64 [comment]`, where BASE64 holds the
/// length-prefixed key type and the 32-byte key (RFC 8709).
fn parse_openssh_public_key(line: &str) -> anyhow::Result<VerifyingKey> {
    let mut fields = line.split_whitespace();
    let kind = fields.next().unwrap_or_default();
    if kind != "ssh-ed25519" {
        bail!(
            "found an OpenSSH `{}` key, where only `ssh-ed25519` keys can check signatures: \
             make one with `ssh-keygen -t ed25519`",
            crate::util::redact::printable(kind)
        );
    }
    let blob = BASE64
        .decode(fields.next().unwrap_or_default())
        .context("found an `ssh-ed25519` line whose key is not base64")?;
    let mut rest = blob.as_slice();
    let named = ssh_string(&mut rest).context("found a truncated `ssh-ed25519` key")?;
    let key = ssh_string(&mut rest).context("found a truncated `ssh-ed25519` key")?;
    if named != b"ssh-ed25519" || !rest.is_empty() {
        bail!("found an `ssh-ed25519` line whose key data is not an ed25519 key");
    }
    let key: [u8; 32] = key
        .try_into()
        .map_err(|_| anyhow::anyhow!("found an `ssh-ed25519` key of {} bytes, where one is 32", key.len()))?;
    VerifyingKey::from_bytes(&key).context("found an `ssh-ed25519` key that is not a valid ed25519 point")
}

/// One SSH wire-format string: a big-endian u32 length, then that many bytes.
fn ssh_string<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, tail) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    if len > tail.len() {
        return None;
    }
    let (string, tail) = tail.split_at(len);
    *rest = tail;
    Some(string)
}

fn parse_private_key(bytes: &[u8]) -> anyhow::Result<SigningKey> {
    let secret = match bytes.first() {
        Some(&WASMSIGN2_SECRET_KEY_ID) if bytes.len() == 65 => {
            Some(wasmsign2::SecretKey::from_bytes(bytes).map_err(wasmsign2_error)?)
        }
        Some(&WASMSIGN2_PUBLIC_KEY_ID) if bytes.len() == 33 => {
            bail!("found a wasmsign2 public key: signing needs the secret key (`wasmsign2 keygen -k`)")
        }
        // DER starts with 0x30, which is also `0`: base64 text may start with it.
        Some(0x30) => wasmsign2::SecretKey::from_der(bytes).ok(),
        _ => None,
    };
    if let Some(secret) = secret {
        return Ok(signing_key(&secret));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| match bytes.first() {
            Some(0x30) => anyhow::anyhow!("found {}, not an ed25519 secret key in DER", describe(bytes)),
            _ => anyhow::anyhow!("found {}", describe(bytes)),
        })?
        .trim();
    if text.contains("OPENSSH PRIVATE KEY") || text.starts_with("ssh-") {
        bail!("found an OpenSSH key, which `echo-host sign` does not read: sign with `wasmsign2 sign --ssh`");
    }
    if text.starts_with("-----BEGIN") {
        let secret = wasmsign2::SecretKey::from_pem(text)
            .map_err(|_| anyhow::anyhow!("found a PEM file that is not an ed25519 private key"))?;
        return Ok(signing_key(&secret));
    }
    let decoded = BASE64.decode(text).map_err(|_| anyhow::anyhow!("found {}", describe(bytes)))?;
    let seed: [u8; 32] = decoded.try_into().map_err(|decoded: Vec<u8>| {
        anyhow::anyhow!("found one line of base64 of {} bytes, where a private key is 32", decoded.len())
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

fn verifying_key(key: &wasmsign2::PublicKey) -> anyhow::Result<VerifyingKey> {
    VerifyingKey::from_bytes(&key.pk).context("found a key that is not a valid ed25519 point")
}

fn signing_key(secret: &wasmsign2::SecretKey) -> SigningKey {
    SigningKey::from_bytes(&secret.sk.seed())
}

fn wasmsign2_error(error: wasmsign2::WSError) -> anyhow::Error {
    anyhow::anyhow!("wasmsign2 cannot read it: {error}")
}

/// A short description of bytes that are not a key: their length and how they start.
pub(super) fn describe(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "an empty file".to_string();
    }
    let head = &bytes[..bytes.len().min(16)];
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next().unwrap_or_default().trim();
    if !line.is_empty() && line.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        format!("{} bytes starting `{line}`", bytes.len())
    } else {
        format!("{} bytes starting 0x{}", bytes.len(), hex::encode(&head[..head.len().min(8)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A missing key file names the flag it was given with.
    #[test]
    fn base64_keys_that_start_with_a_zero_are_not_taken_for_der() {
        // `0` is 0x30, DER's first byte: about one key in 64 from `echo-host keygen` starts so.
        let (seed, key) = (0u8..=255)
            .map(|n| [n; 32])
            .map(|seed| (seed, SigningKey::from_bytes(&seed)))
            .find(|(_, key)| BASE64.encode(key.verifying_key().as_bytes()).starts_with('0'))
            .expect("a public key whose base64 starts with `0`");
        let public = BASE64.encode(key.verifying_key().as_bytes()) + "\n";
        assert_eq!(parse_public_key(public.as_bytes()).unwrap(), key.verifying_key());
        let mut zero_seed = seed;
        zero_seed[0] = 0xd0; // base64 `0…`
        let private = BASE64.encode(zero_seed) + "\n";
        assert!(private.starts_with('0'));
        assert_eq!(parse_private_key(private.as_bytes()).unwrap().to_bytes(), zero_seed);
        // Real DER that is not a key still says so.
        let error = parse_public_key(&[0x30, 0x03, 0x02, 0x01, 0xff]).unwrap_err();
        assert!(error.to_string().contains("DER"), "{error}");
    }

    #[test]
    fn a_missing_key_names_its_flag() {
        let error = format!("{:#}", read_public_key(Path::new("/nonexistent/k.pub")).unwrap_err());
        assert!(
            error.starts_with("cannot read the `--trusted-key` public key `/nonexistent/k.pub`: "),
            "{error}"
        );
        let error = format!("{:#}", read_private_key(Path::new("/nonexistent/k")).unwrap_err());
        assert!(error.starts_with("cannot read the `--key` private key `/nonexistent/k`: "), "{error}");
    }
}
