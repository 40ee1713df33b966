//! Ed25519 signatures over component bytes: `keygen`, `sign`, and the check `--trusted-key` makes.
//!
//! Keys and signatures are one line of base64 so they fit in files, env vars and HTTP headers:
//! a private key is its 32-byte seed, a public key its 32 bytes, a signature its 64 bytes.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// The header an admin upload carries its signature in.
pub const SIGNATURE_HEADER: &str = "echo-host-signature";

fn decode_exact<const N: usize>(text: &str, what: &str) -> anyhow::Result<[u8; N]> {
    let bytes = BASE64.decode(text.trim()).with_context(|| format!("the {what} is not base64"))?;
    bytes.try_into().map_err(|b: Vec<u8>| anyhow::anyhow!("the {what} is {} bytes, expected {N}", b.len()))
}

pub fn read_public_key(path: &Path) -> anyhow::Result<VerifyingKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the public key `{}`", path.display()))?;
    let bytes = decode_exact::<32>(&text, "public key")
        .with_context(|| format!("`{}` is not a key from `echo-host keygen`", path.display()))?;
    VerifyingKey::from_bytes(&bytes)
        .with_context(|| format!("`{}` is not a valid ed25519 key", path.display()))
}

fn read_private_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the private key `{}`", path.display()))?;
    let seed = decode_exact::<32>(&text, "private key")
        .with_context(|| format!("`{}` is not a key from `echo-host keygen`", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Parses a signature as found in a `.sig` file or the upload header.
pub fn parse_signature(text: &[u8]) -> anyhow::Result<Signature> {
    let text = std::str::from_utf8(text).context("the signature is not text")?;
    Ok(Signature::from_bytes(&decode_exact::<64>(text, "signature")?))
}

/// Checks `signature` (as text) over `bytes`.
pub fn verify(key: &VerifyingKey, bytes: &[u8], signature: &[u8]) -> anyhow::Result<()> {
    let signature = parse_signature(signature)?;
    key.verify(bytes, &signature)
        .map_err(|_| anyhow::anyhow!("the signature does not match this component and key"))
}

/// `echo-host keygen KEY`: writes the private key to `KEY` (mode 0600) and the public key to `KEY.pub`.
pub fn keygen(key_path: &Path) -> anyhow::Result<PathBuf> {
    if key_path.exists() {
        bail!("`{}` already exists; refusing to overwrite a key", key_path.display());
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
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
        verify(&public, b"component bytes", &signature).unwrap();
        assert!(verify(&public, b"other bytes", &signature).is_err());
        assert!(verify(&public, b"component bytes", b"not base64!").is_err());
    }
}
