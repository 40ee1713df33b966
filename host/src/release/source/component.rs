//! What `--component` names ([`ComponentSource`]): the built-in echo, a file, a URL, a Cloud
//! Storage object or an OCI reference, checked before the port is bound.

use std::path::PathBuf;

use anyhow::{Context, bail};

/// Where the served component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentSource {
    /// The echo component built into the binary.
    Builtin,
    File(PathBuf),
    Url(String),
    /// A Cloud Storage object, through the JSON API.
    Gcs(crate::util::gcs::GsObject),
    /// A tag (followed) or a digest (pinned) in an OCI registry.
    Oci(crate::util::oci::Reference),
}

impl ComponentSource {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if text.starts_with("http://") || text.starts_with("https://") {
            let uri: http::Uri = text.parse().with_context(|| {
                format!("`--component` `{}` is not a valid URL", crate::util::redact::url(text))
            })?;
            if uri.host().is_none() {
                bail!("`--component` `{}` has no host", crate::util::redact::url(text));
            }
            return Ok(Self::Url(text.to_string()));
        }
        if text.starts_with("gs://") {
            return Ok(Self::Gcs(crate::util::gcs::GsObject::parse("--component", text)?));
        }
        if text.starts_with("oci://") {
            return Ok(Self::Oci(crate::util::oci::Reference::parse("--component", text)?));
        }
        if text.contains("://") {
            bail!(
                "`--component` `{}`: only files, http(s) URLs, gs:// objects and oci:// references are supported",
                crate::util::redact::url(text)
            );
        }
        let path = PathBuf::from(text);
        let meta = std::fs::metadata(&path)
            .with_context(|| format!("cannot read `--component` `{}`", path.display()))?;
        if !meta.is_file() {
            bail!("`--component` `{}` is not a file", path.display());
        }
        Ok(Self::File(path))
    }
}

impl std::fmt::Display for ComponentSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Builtin => write!(f, "builtin:echo"),
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Url(url) => f.write_str(&crate::util::redact::url(url)),
            Self::Gcs(object) => write!(f, "{object}"),
            Self::Oci(reference) => write!(f, "{reference}"),
        }
    }
}
