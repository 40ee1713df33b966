//! An OCI reference as the host takes it: `oci://REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]`,
//! checked before anything is sent; credentials never go in it.

use anyhow::bail;

/// The tag a reference without one means, as every OCI client does.
pub const DEFAULT_TAG: &str = "latest";

/// Where a component lives in a registry: a tag to follow, or a digest that never changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `HOST[:PORT]`, as written (`docker.io` is reached at `registry-1.docker.io`).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:…` (64 lowercase hex digits), when pinned.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `oci://REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]`; `flag` names where it came from.
    pub fn parse(flag: &str, text: &str) -> anyhow::Result<Self> {
        let Some(rest) = text.trim().strip_prefix("oci://") else {
            bail!("`{flag}` `{text}` is not an OCI reference: write `oci://REGISTRY/REPOSITORY:TAG`");
        };
        let (name, digest) = match rest.rsplit_once('@') {
            Some((name, digest)) if digest.starts_with("sha256:") => {
                (name, Some(check_digest(flag, digest)?))
            }
            _ => (rest, None),
        };
        let Some((registry, path)) = name.split_once('/') else {
            bail!("`{flag}` `{text}` names no repository: write `oci://REGISTRY/REPOSITORY:TAG`");
        };
        if registry.contains('@') {
            bail!(
                "`{flag}`: credentials do not go in an OCI reference (they would be logged); use \
                 `--registry-username` with `--registry-password-file`, or a Docker `config.json`"
            );
        }
        check_registry(flag, registry)?;
        // A `:` after the last `/` starts the tag.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
            _ => (path, None),
        };
        check_repository(flag, repository)?;
        if let Some(tag) = tag {
            check_tag(flag, tag)?;
        }
        Ok(Self {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// A digest reference never changes: nothing to poll.
    pub fn pinned(&self) -> bool {
        self.digest.is_some()
    }

    /// What the manifest is asked for by: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest,
            (None, Some(tag)) => tag,
            (None, None) => DEFAULT_TAG,
        }
    }

    /// Where the registry's API is: `https://HOST` (`http://` for a registry named insecure).
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" { "registry-1.docker.io" } else { &self.registry }
    }

    /// The repository as the API names it (Docker Hub's official images live under `library/`).
    pub fn api_repository(&self) -> String {
        if self.registry == "docker.io" && !self.repository.contains('/') {
            format!("library/{}", self.repository)
        } else {
            self.repository.clone()
        }
    }

    /// This reference resolved to `digest`: `oci://REGISTRY/REPOSITORY:TAG@sha256:…`, the
    /// provenance a version carries into logs, `info` and the release history.
    pub fn at(&self, digest: &str) -> String {
        let tag = self.tag.as_deref().map(|t| format!(":{t}")).unwrap_or_default();
        format!("oci://{}/{}{tag}@{digest}", self.registry, self.repository)
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "oci://{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `sha256:` and 64 lowercase hex digits (the only digest algorithm the host checks).
pub fn check_digest(flag: &str, digest: &str) -> anyhow::Result<String> {
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        bail!(
            "`{flag}`: `{}` is not a digest: expected `sha256:` and 64 lowercase hex digits",
            shorten(digest)
        );
    }
    Ok(digest.to_string())
}

/// `HOST[:PORT]`, where HOST has a dot or is `localhost` (else it reads like a Docker Hub name).
fn check_registry(flag: &str, registry: &str) -> anyhow::Result<()> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let host_ok = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && (host.contains('.') || host == "localhost");
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if !host_ok || !port_ok {
        bail!(
            "`{flag}`: `{}` is not a registry host: write it in full, e.g. `oci://ghcr.io/OWNER/NAME:TAG` or \
             `oci://REGION-docker.pkg.dev/PROJECT/REPOSITORY/NAME:TAG`",
            shorten(registry)
        );
    }
    Ok(())
}

/// Lowercase path components of letters and digits joined by `.`, `_`, `__` or dashes, as the
/// distribution spec's grammar has it.
fn check_repository(flag: &str, repository: &str) -> anyhow::Result<()> {
    let component_ok = |c: &str| {
        let bytes = c.as_bytes();
        !c.is_empty()
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
            && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
    };
    if repository.len() > 255 || !repository.split('/').all(component_ok) {
        bail!(
            "`{flag}`: `{}` is not a repository name: lowercase letters, digits and `._-`, components separated by `/`",
            shorten(repository)
        );
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(flag: &str, tag: &str) -> anyhow::Result<()> {
    let bytes = tag.as_bytes();
    let ok = (1..=128).contains(&bytes.len())
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b));
    if !ok {
        bail!("`{flag}`: `{}` is not a tag: up to 128 of letters, digits and `_.-`", shorten(tag));
    }
    Ok(())
}

/// At most 80 printable characters of user input, for an error message.
fn shorten(text: &str) -> String {
    let shown: String = text.chars().take(80).map(|c| if c.is_control() { '?' } else { c }).collect();
    if text.chars().count() > 80 { format!("{shown}…") } else { shown }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_parse_with_tag_digest_and_port() {
        let r = Reference::parse("--component", "oci://127.0.0.1:5000/team/echo:v1").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("127.0.0.1:5000", "team/echo"));
        assert_eq!((r.tag.as_deref(), r.manifest_ref(), r.pinned()), (Some("v1"), "v1", false));
        let pinned = Reference::parse("c", &format!("oci://ghcr.io/o/echo:v1@{DIGEST}")).unwrap();
        assert_eq!((pinned.manifest_ref(), pinned.pinned()), (DIGEST, true));
        assert_eq!(pinned.to_string(), format!("oci://ghcr.io/o/echo:v1@{DIGEST}"));
        let bare = Reference::parse("c", "oci://localhost:5000/echo").unwrap();
        assert_eq!((bare.tag.as_deref(), bare.manifest_ref()), (None, DEFAULT_TAG));
        assert_eq!(bare.at(DIGEST), format!("oci://localhost:5000/echo@{DIGEST}"));
        let hub = Reference::parse("c", "oci://docker.io/echo:1").unwrap();
        assert_eq!((hub.api_host(), hub.api_repository().as_str()), ("registry-1.docker.io", "library/echo"));
    }

    #[test]
    fn bad_references_are_refused_with_what_to_write() {
        for (text, says) in [
            ("ghcr.io/o/e:v1", "oci://"),
            ("oci://ghcr.io", "no repository"),
            ("oci://user:secret@ghcr.io/o/e:v1", "credentials"),
            ("oci://echo/e:v1", "registry host"),
            ("oci://ghcr.io/O/E:v1", "repository name"),
            ("oci://ghcr.io/o//e:v1", "repository name"),
            ("oci://ghcr.io/o/e:-v1", "not a tag"),
            ("oci://ghcr.io/o/e@sha256:abc", "not a digest"),
            ("oci://ghcr.io:99999/o/e", "registry host"),
        ] {
            let error = Reference::parse("--component", text).unwrap_err().to_string();
            assert!(error.contains(says), "{text}: {error}");
            assert!(!error.contains("secret"), "{text}: {error}");
        }
    }
}
