//! Which OCI artifacts hold a component, and where in them: the CNCF Wasm OCI artifact (one
//! `application/wasm` layer, what `wkg oci push` and `oras push f.wasm:application/wasm` write),
//! the older `application/vnd.wasm.content.layer.v1+wasm` layer (wasm-to-oci, `oci-client`), and an
//! image index's `wasm`/`wasip2` entry. Anything else is refused, naming what was found.

use serde::Deserialize;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// What a manifest request accepts.
pub const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// The CNCF Wasm OCI artifact's layer.
pub const WASM_LAYER: &str = "application/wasm";
/// The older layer type (wasm-to-oci, `oci-client`'s `WASM_LAYER_MEDIA_TYPE`).
pub const LEGACY_WASM_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// Configs that say "container image": such a manifest is not a component.
const IMAGE_CONFIGS: &[&str] =
    &["application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"];

/// Which layout a component came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Config `application/vnd.wasm.config.v0+json`, one `application/wasm` layer.
    Cncf,
    /// One `application/vnd.wasm.content.layer.v1+wasm` layer.
    Legacy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub artifact_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// What a manifest document says to do next.
#[derive(Debug)]
pub enum Next {
    /// An image index: fetch this entry's manifest.
    Entry(Descriptor),
    /// A manifest: fetch this layer, the component.
    Layer(Descriptor, Layout),
}

/// Reads a manifest or an index; `content_type` is the registry's `Content-Type`, used when the
/// document does not name its own media type.
pub fn next(bytes: &[u8], content_type: Option<&str>) -> Result<Next, String> {
    let document: Document =
        serde_json::from_slice(bytes).map_err(|e| format!("the manifest is not OCI manifest JSON ({e})"))?;
    let media_type = document.media_type.as_deref().or(content_type).unwrap_or("");
    if let Some(entries) = document.manifests {
        if !matches!(media_type, OCI_INDEX | DOCKER_LIST | "") {
            return Err(format!("an index with media type `{media_type}`"));
        }
        return pick_entry(entries).map(Next::Entry);
    }
    let config = document.config.ok_or("a manifest without a config")?;
    let layers = document.layers.unwrap_or_default();
    wasm_layer(&config, layers).map(|(layer, layout)| Next::Layer(layer, layout))
}

/// The index entry for WebAssembly: platform `wasm` architecture or a `wasi*` OS (`wasip2`
/// first), or an artifact type naming a Wasm config.
fn pick_entry(entries: Vec<Descriptor>) -> Result<Descriptor, String> {
    let rank = |d: &Descriptor| match &d.platform {
        Some(p) if p.os == "wasip2" => Some(0),
        Some(p) if p.architecture == "wasm" || p.os.starts_with("wasi") => Some(1),
        _ if d.artifact_type.as_deref().is_some_and(|t| t.starts_with("application/vnd.wasm.config")) => {
            Some(2)
        }
        _ => None,
    };
    let found: Vec<String> = entries
        .iter()
        .map(|d| match &d.platform {
            Some(p) => format!("{}/{}", p.os, p.architecture),
            None => "(no platform)".to_string(),
        })
        .collect();
    entries
        .into_iter()
        .filter_map(|d| rank(&d).map(|r| (r, d)))
        .min_by_key(|(r, _)| *r)
        .map(|(_, d)| d)
        .ok_or_else(|| {
            format!("an image index with no WebAssembly entry (platforms: {}); expected one for `wasip2` or `wasm`", found.join(", "))
        })
}

/// The one wasm layer of a manifest.
fn wasm_layer(config: &Descriptor, layers: Vec<Descriptor>) -> Result<(Descriptor, Layout), String> {
    let types: Vec<&str> = layers.iter().map(|l| l.media_type.as_str()).collect();
    let expected = "one `application/wasm` layer (a CNCF Wasm OCI artifact: `wkg oci push`, \
                    `oras push FILE.wasm:application/wasm`) or one `application/vnd.wasm.content.layer.v1+wasm` layer";
    if IMAGE_CONFIGS.contains(&config.media_type.as_str()) && !types.iter().any(|t| is_wasm(t)) {
        return Err(format!(
            "a container image (config `{}`, layers {}), not a component; expected {expected}",
            config.media_type,
            list(&types)
        ));
    }
    match layers.as_slice() {
        [layer] if layer.media_type == WASM_LAYER => Ok((layer.clone(), Layout::Cncf)),
        [layer] if layer.media_type == LEGACY_WASM_LAYER => Ok((layer.clone(), Layout::Legacy)),
        _ => Err(format!("a manifest with layers {}; expected {expected}", list(&types))),
    }
}

fn is_wasm(media_type: &str) -> bool {
    media_type == WASM_LAYER || media_type == LEGACY_WASM_LAYER
}

/// `` `a`, `b` `` (at most 8, printable), or `none`.
fn list(types: &[&str]) -> String {
    if types.is_empty() {
        return "none".to_string();
    }
    let mut shown: Vec<String> = types
        .iter()
        .take(8)
        .map(|t| {
            format!(
                "`{}`",
                t.chars().take(100).map(|c| if c.is_control() { '?' } else { c }).collect::<String>()
            )
        })
        .collect();
    if types.len() > 8 {
        shown.push(format!("and {} more", types.len() - 8));
    }
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(media_type: &str) -> String {
        format!(r#"{{"mediaType":"{media_type}","digest":"sha256:{}","size":3}}"#, "a".repeat(64))
    }

    fn manifest(config: &str, layers: &[&str]) -> Vec<u8> {
        let layers: Vec<String> = layers.iter().map(|l| descriptor(l)).collect();
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
            descriptor(config),
            layers.join(",")
        )
        .into_bytes()
    }

    #[test]
    fn both_wasm_layouts_are_found() {
        let cncf = manifest("application/vnd.wasm.config.v0+json", &[WASM_LAYER]);
        assert!(matches!(next(&cncf, None), Ok(Next::Layer(_, Layout::Cncf))));
        let legacy = manifest("application/vnd.wasm.config.v1+json", &[LEGACY_WASM_LAYER]);
        assert!(matches!(next(&legacy, None), Ok(Next::Layer(_, Layout::Legacy))));
    }

    #[test]
    fn other_artifacts_are_refused_naming_what_was_found() {
        let image = manifest(IMAGE_CONFIGS[0], &["application/vnd.oci.image.layer.v1.tar+gzip"]);
        let error = next(&image, None).unwrap_err();
        assert!(error.contains("container image") && error.contains("tar+gzip"), "{error}");
        let two = manifest("application/vnd.wasm.config.v0+json", &[WASM_LAYER, WASM_LAYER]);
        assert!(next(&two, None).unwrap_err().contains("`application/wasm`, `application/wasm`"));
        let odd = manifest("application/vnd.wasm.config.v0+json", &["text/plain"]);
        assert!(next(&odd, None).unwrap_err().contains("`text/plain`"));
        assert!(next(b"not json", None).unwrap_err().contains("not OCI manifest JSON"));
    }

    #[test]
    fn an_index_picks_its_wasip2_entry() {
        let entry = |os: &str, arch: &str, digest: char| {
            format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{}","size":3,"platform":{{"os":"{os}","architecture":"{arch}"}}}}"#,
                digest.to_string().repeat(64)
            )
        };
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{},{}]}}"#,
            entry("linux", "amd64", 'a'),
            entry("wasip2", "wasm", 'b')
        );
        match next(index.as_bytes(), None) {
            Ok(Next::Entry(d)) => assert!(d.digest.ends_with('b'), "{d:?}"),
            other => panic!("{other:?}"),
        }
        let linux_only = format!(r#"{{"manifests":[{}]}}"#, entry("linux", "amd64", 'a'));
        assert!(next(linux_only.as_bytes(), Some(OCI_INDEX)).unwrap_err().contains("linux/amd64"));
    }
}
