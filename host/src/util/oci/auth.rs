//! Who the host is to a registry, as the ecosystem's clients do it: anonymous; a user and a
//! password (flags with a password file, or a Docker `config.json`); on Google Cloud, the
//! metadata server's access token as the password of `oauth2accesstoken` (what
//! `docker-credential-gcr` does) for Artifact Registry. And the registry's challenge
//! (`WWW-Authenticate: Basic …` or `Bearer realm=…,service=…,scope=…`), parsed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::util::gcs::auth::TokenSource;

/// The hosts that get the metadata server's token by default: Artifact Registry and Container
/// Registry.
pub const DEFAULT_GOOGLE_REGISTRIES: &str = "*-docker.pkg.dev,gcr.io,*.gcr.io";

/// The user name Google's registries take an access token as the password of.
pub const GOOGLE_TOKEN_USER: &str = "oauth2accesstoken";

/// A password or token: never printed (its `Debug` says so).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: String) -> Self {
        Self(text)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(not shown)")
    }
}

/// How to log in to one registry.
#[derive(Clone, Debug)]
pub enum Login {
    Anonymous,
    Basic {
        username: String,
        password: Secret,
    },
    /// The metadata server's access token as the password of [`GOOGLE_TOKEN_USER`].
    MetadataToken,
}

/// The logins the host knows, by registry host.
#[derive(Default)]
pub struct Logins {
    /// `--registry-username` with `--registry-password-file`, for the one registry they name.
    explicit: Option<(String, String, Secret)>,
    /// A Docker `config.json`'s `auths`, by host.
    docker: HashMap<String, (String, Secret)>,
    /// Host patterns (`*-docker.pkg.dev`) that get the metadata server's token.
    google: Vec<String>,
    tokens: Option<Arc<TokenSource>>,
}

impl Logins {
    /// `explicit`: `(registry host, user, password)`; `docker`: a parsed `config.json`;
    /// `google`: host patterns for the metadata token, with the token source (absent off Google
    /// Cloud's metadata server, e.g. with a storage emulator and no `GCE_METADATA_HOST`).
    pub fn new(
        explicit: Option<(String, String, Secret)>,
        docker: HashMap<String, (String, Secret)>,
        google: Vec<String>,
        tokens: Option<Arc<TokenSource>>,
    ) -> Self {
        Self { explicit, docker, google, tokens }
    }

    /// The login for `host` (`HOST[:PORT]`): the flags' if they name it, else `config.json`'s,
    /// else the metadata token for a Google registry, else anonymous.
    pub fn login(&self, host: &str) -> Login {
        if let Some((registry, username, password)) = &self.explicit
            && registry == host
        {
            return Login::Basic { username: username.clone(), password: password.clone() };
        }
        if let Some((username, password)) = self.docker.get(host) {
            return Login::Basic { username: username.clone(), password: password.clone() };
        }
        if self.tokens.is_some() && self.google.iter().any(|pattern| matches_host(pattern, host)) {
            return Login::MetadataToken;
        }
        Login::Anonymous
    }

    /// The user and password to send for `login`, fetching the metadata token if it is one.
    pub async fn basic(&self, login: &Login) -> anyhow::Result<Option<(String, Secret)>> {
        match login {
            Login::Anonymous => Ok(None),
            Login::Basic { username, password } => Ok(Some((username.clone(), password.clone()))),
            Login::MetadataToken => {
                let source = self.tokens.as_ref().context("no metadata server to get a token from")?;
                let token = source.token().await?.context("the metadata server gave no token")?;
                Ok(Some((GOOGLE_TOKEN_USER.to_string(), Secret::new(token))))
            }
        }
    }

    /// After a refused token: the next [`Logins::basic`] fetches a new one.
    pub async fn invalidate(&self, login: &Login) {
        if let (Login::MetadataToken, Some(source)) = (login, &self.tokens) {
            source.invalidate().await;
        }
    }
}

/// `*-docker.pkg.dev` matches `europe-west1-docker.pkg.dev`; anything else matches exactly.
fn matches_host(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

/// The `auths` of a Docker `config.json` (`DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`): `auth` (base64 `user:password`) or `username` + `password`, by
/// host. A missing file is no logins; an unreadable or malformed one is an error naming it.
pub fn docker_config(
    dir: Option<&Path>,
    home: Option<&Path>,
) -> anyhow::Result<HashMap<String, (String, Secret)>> {
    let path = match (dir, home) {
        (Some(dir), _) => dir.join("config.json"),
        (None, Some(home)) => home.join(".docker/config.json"),
        (None, None) => return Ok(HashMap::new()),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read the Docker config `{}`", path.display()));
        }
    };
    parse_docker_config(&text).with_context(|| format!("the Docker config `{}`", path.display()))
}

fn parse_docker_config(text: &str) -> anyhow::Result<HashMap<String, (String, Secret)>> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let config: Config = serde_json::from_str(text).context("is not JSON with an `auths` object")?;
    let mut logins = HashMap::new();
    for (key, entry) in config.auths {
        let host = registry_host(&key);
        let (username, password) = match (entry.auth, entry.username, entry.password) {
            (Some(auth), _, _) if !auth.is_empty() => {
                let decoded = BASE64
                    .decode(auth.trim())
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .with_context(|| format!("`auths.{host}.auth` is not base64 of `user:password`"))?;
                let Some((user, password)) = decoded.split_once(':') else {
                    bail!("`auths.{host}.auth` is not base64 of `user:password`");
                };
                (user.to_string(), password.to_string())
            }
            (_, Some(user), Some(password)) => (user, password),
            // An entry kept by a credential helper (`credsStore`): not something the host runs.
            _ => continue,
        };
        logins.insert(host, (username, Secret::new(password)));
    }
    Ok(logins)
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://host:5000/x` → `host:5000`.
fn registry_host(key: &str) -> String {
    let rest = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = rest.split('/').next().unwrap_or(rest);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        host => host.to_string(),
    }
}

/// What a registry's 401 asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Parses a `WWW-Authenticate` value: `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let (scheme, params) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(params);
    let get = |key: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.clone());
    Some(Challenge::Bearer { realm: get("realm")?, service: get("service"), scope: get("scope") })
}

/// `a="x,y",b=z` → `[(a, "x,y"), (b, "z")]`: commas inside quotes stay.
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let after = after.trim_start();
        let (value, tail) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.find('"') {
                Some(end) => (quoted[..end].to_string(), &quoted[end + 1..]),
                None => (quoted.to_string(), ""),
            },
            None => match after.find(',') {
                Some(end) => (after[..end].trim().to_string(), &after[end..]),
                None => (after.trim().to_string(), ""),
            },
        };
        params.push((key, value));
        rest = tail.trim_start().trim_start_matches(',');
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_commas_in_quotes() {
        let value = r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#;
        assert_eq!(
            parse_challenge(value),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Bearer service=x"), None, "a Bearer challenge needs a realm");
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn docker_config_entries_are_read_by_host() {
        let text = r#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dTpwdw=="},
            "127.0.0.1:5000":{"username":"me","password":"pw2"},
            "ghcr.io":{}
        },"credsStore":"desktop"}"#;
        let logins = parse_docker_config(text).unwrap();
        assert_eq!(logins["docker.io"].0, "u");
        assert_eq!(logins["docker.io"].1.expose(), "pw");
        assert_eq!(logins["127.0.0.1:5000"].1.expose(), "pw2");
        assert!(!logins.contains_key("ghcr.io"));
        let error = parse_docker_config(r#"{"auths":{"h":{"auth":"!!"}}}"#).unwrap_err();
        assert!(format!("{error:#}").contains("auths.h.auth"), "{error:#}");
        assert!(!format!("{:?}", logins["docker.io"].1).contains("pw"));
    }

    #[test]
    fn logins_prefer_flags_then_config_then_google() {
        let docker = HashMap::from([("r.example".to_string(), ("d".to_string(), Secret::new("p".into())))]);
        let explicit = Some(("r.example".to_string(), "f".to_string(), Secret::new("q".into())));
        let logins = Logins::new(explicit, docker, vec!["*-docker.pkg.dev".into()], None);
        assert!(matches!(logins.login("r.example"), Login::Basic { username, .. } if username == "f"));
        assert!(matches!(logins.login("other.example"), Login::Anonymous));
        // No metadata server: a Google host is anonymous rather than a failure at every poll.
        assert!(matches!(logins.login("europe-docker.pkg.dev"), Login::Anonymous));
        assert!(matches_host("*-docker.pkg.dev", "us-docker.pkg.dev"));
        assert!(
            !matches_host("*-docker.pkg.dev", "-docker.pkg.dev.evil") && !matches_host("gcr.io", "xgcr.io")
        );
    }
}
