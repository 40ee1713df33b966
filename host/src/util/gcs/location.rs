//! `gs://` locations: an object (`--component gs://BUCKET/OBJECT`) and a prefix
//! (`--store gs://BUCKET/PREFIX/`).

use anyhow::bail;

/// One object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GsObject {
    pub bucket: String,
    pub object: String,
}

/// A folder-like prefix: empty (the bucket's root) or ending with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GsPrefix {
    pub bucket: String,
    pub prefix: String,
}

fn split(flag: &str, text: &str) -> anyhow::Result<(String, String)> {
    let Some(rest) = text.strip_prefix("gs://") else {
        bail!("`{flag}` `{text}` is not a `gs://BUCKET/...` location (e.g. `gs://my-bucket/echo/`)");
    };
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    // Cloud Storage's naming rules, simplified: 3-222 characters of a-z 0-9 - _ . (63 between dots).
    let valid = (3..=222).contains(&bucket.len())
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && bucket.split('.').all(|part| !part.is_empty() && part.len() <= 63);
    if !valid {
        bail!(
            "`{flag}` `{text}`: `{bucket}` is not a valid bucket name (3-63 characters: a-z, 0-9, `-`, `_`, `.`)"
        );
    }
    if path.contains("//")
        || path.contains('\n')
        || path.contains('\r')
        || path.contains('#')
        || path.contains('?')
    {
        bail!("`{flag}` `{text}`: the object path must not contain `//`, `#`, `?` or line breaks");
    }
    Ok((bucket.to_string(), path.to_string()))
}

impl GsObject {
    pub fn parse(flag: &str, text: &str) -> anyhow::Result<Self> {
        let (bucket, object) = split(flag, text)?;
        if object.is_empty() || object.ends_with('/') {
            bail!("`{flag}` `{text}` names no object (expected `gs://BUCKET/OBJECT`)");
        }
        Ok(Self { bucket, object })
    }
}

impl GsPrefix {
    pub fn parse(flag: &str, text: &str) -> anyhow::Result<Self> {
        let (bucket, mut prefix) = split(flag, text)?;
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Self { bucket, prefix })
    }

    /// The full name of `name` under the prefix.
    pub fn object(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

impl std::fmt::Display for GsObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gs://{}/{}", self.bucket, self.object)
    }
}

impl std::fmt::Display for GsPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gs://{}/{}", self.bucket, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_and_prefixes_parse() {
        let object = GsObject::parse("--component", "gs://my-bucket/releases/echo.wasm").unwrap();
        assert_eq!((object.bucket.as_str(), object.object.as_str()), ("my-bucket", "releases/echo.wasm"));
        assert_eq!(object.to_string(), "gs://my-bucket/releases/echo.wasm");
        assert_eq!(GsPrefix::parse("--store", "gs://b-1/fleet").unwrap().prefix, "fleet/");
        assert_eq!(GsPrefix::parse("--store", "gs://b-1/").unwrap().prefix, "");
        assert_eq!(GsPrefix::parse("--store", "gs://b-1").unwrap().object("manifest.json"), "manifest.json");
    }

    #[test]
    fn nonsense_is_refused_naming_the_flag() {
        for bad in ["gs://", "gs://UPPER/o", "gs://ab/o", "s3://bucket/o", "gs://bucket/a//b"] {
            let error = GsPrefix::parse("--store", bad).unwrap_err();
            assert!(error.to_string().contains("--store"), "{bad}: {error}");
        }
        let error = GsPrefix::parse("--store", "my-bucket/echo").unwrap_err().to_string();
        assert!(
            error.ends_with("is not a `gs://BUCKET/...` location (e.g. `gs://my-bucket/echo/`)"),
            "{error}"
        );
        assert!(GsObject::parse("--component", "gs://bucket/").is_err());
        assert!(GsObject::parse("--component", "gs://bucket/dir/").is_err());
    }
}
