//! The OCI registry flags: which registries speak plain HTTP, an extra CA, and the logins.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;

use crate::release::source::ComponentSource;
use crate::util::gcs::StorageConfig;
use crate::util::gcs::auth::{Credentials, TokenSource};
use crate::util::oci::auth::{DEFAULT_GOOGLE_REGISTRIES, docker_config};
use crate::util::oci::{Logins, Registry, RegistryConfig, Secret};

#[derive(Debug, Args, Clone)]
pub struct RegistryArgs {
    /// A registry (`HOST[:PORT]`) reached over plain HTTP rather than HTTPS; repeat the flag or
    /// separate with commas. Only for a registry on a network you trust (a local one): nothing
    /// to or from it is encrypted, credentials included.
    #[arg(long = "insecure-registry", env = "ECHO_HOST_INSECURE_REGISTRIES", value_delimiter = ',')]
    pub insecure_registries: Vec<String>,

    /// A PEM file of CA certificates trusted for registries, beside the built-in roots (a
    /// registry with a private CA).
    #[arg(long, env = "ECHO_HOST_REGISTRY_CA_FILE")]
    pub registry_ca_file: Option<PathBuf>,

    /// The user to log in to a registry as (HTTP Basic, or its token service's Basic), with the
    /// password in `--registry-password-file`. Sent only to `--registry-login-host`.
    #[arg(long, env = "ECHO_HOST_REGISTRY_USERNAME", requires = "registry_password_file")]
    pub registry_username: Option<String>,

    /// A file holding the registry password or access token (surrounding whitespace trimmed).
    #[arg(long, env = "ECHO_HOST_REGISTRY_PASSWORD_FILE", requires = "registry_username")]
    pub registry_password_file: Option<PathBuf>,

    /// The registry (`HOST[:PORT]`) the `--registry-username` login is for. Default: the
    /// `--component`'s, when that is an `oci://` reference.
    #[arg(long, env = "ECHO_HOST_REGISTRY_LOGIN_HOST")]
    pub registry_login_host: Option<String>,

    /// Registries that get the metadata server's access token as the password of
    /// `oauth2accesstoken`, as `docker-credential-gcr` does (host names; `*-docker.pkg.dev`
    /// matches every Artifact Registry region). The service account needs
    /// `roles/artifactregistry.reader`.
    #[arg(long, env = "ECHO_HOST_GOOGLE_REGISTRIES", value_delimiter = ',', default_value = DEFAULT_GOOGLE_REGISTRIES)]
    pub google_registries: Vec<String>,

    /// The Docker config directory whose `config.json` `auths` give registry logins (as
    /// `docker login` writes them). Default: `~/.docker`.
    #[arg(long, env = "DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,
}

impl RegistryArgs {
    /// The registry client's settings, every file read and checked now. `component` gives the
    /// default login host; `storage` the metadata server, whose token cache the registries share.
    pub fn validate(
        &self,
        component: &ComponentSource,
        storage: &StorageConfig,
        timeout: std::time::Duration,
    ) -> anyhow::Result<RegistryConfig> {
        for host in &self.insecure_registries {
            if host.is_empty() || host.contains('/') || host.contains("://") {
                bail!("`--insecure-registry` `{host}` must be `HOST` or `HOST:PORT`");
            }
        }
        let explicit = match (&self.registry_username, &self.registry_password_file) {
            (Some(username), Some(path)) => {
                let password = std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read `--registry-password-file` `{}`", path.display())
                })?;
                let host = match (&self.registry_login_host, component) {
                    (Some(host), _) => host.clone(),
                    (None, ComponentSource::Oci(reference)) => reference.registry.clone(),
                    (None, _) => bail!(
                        "`--registry-username`: name the registry it is for with `--registry-login-host HOST` (the login is sent only there)"
                    ),
                };
                Some((host, username.clone(), Secret::new(password.trim().to_string())))
            }
            _ => None,
        };
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let docker = match docker_config(self.docker_config.as_deref(), home.as_deref()) {
            Ok(logins) => logins,
            // A broken `~/.docker/config.json` must not stop a host that never reads a registry.
            Err(error) if self.docker_config.is_none() && !matches!(component, ComponentSource::Oci(_)) => {
                eprintln!("warning: registry logins from the Docker config are not used: {error:#}");
                Default::default()
            }
            Err(error) => return Err(error),
        };
        let tokens = match storage.metadata_host.as_deref() {
            Some(host) => {
                Some(TokenSource::shared(&Credentials::MetadataServer { host: host.to_string() }, timeout)?)
            }
            None => None,
        };
        let google = self.google_registries.iter().map(|h| h.trim().to_string()).filter(|h| !h.is_empty());
        let config = RegistryConfig {
            insecure: self.insecure_registries.clone(),
            ca_file: self.registry_ca_file.clone(),
            timeout,
            logins: Arc::new(Logins::new(explicit, docker, google.collect(), tokens)),
            cache: Arc::default(),
        };
        // Reads and checks `--registry-ca-file` now, before the port is bound.
        Registry::new(&config)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(docker_config: Option<PathBuf>) -> RegistryArgs {
        RegistryArgs {
            insecure_registries: Vec::new(),
            registry_ca_file: None,
            registry_username: None,
            registry_password_file: None,
            registry_login_host: None,
            google_registries: vec![DEFAULT_GOOGLE_REGISTRIES.to_string()],
            docker_config,
        }
    }

    #[test]
    fn a_broken_docker_config_is_an_error_when_named_or_needed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
        let storage = StorageConfig::default();
        let timeout = std::time::Duration::from_secs(5);
        let oci = ComponentSource::parse("oci://127.0.0.1:5000/echo:v1").unwrap();
        let error = args(Some(dir.path().into())).validate(&oci, &storage, timeout).unwrap_err();
        assert!(format!("{error:#}").contains("config.json"), "{error:#}");
        // Named explicitly, it is an error whatever the component.
        assert!(
            args(Some(dir.path().into())).validate(&ComponentSource::Builtin, &storage, timeout).is_err()
        );
        let missing = args(Some(dir.path().join("nowhere")));
        assert!(missing.validate(&oci, &storage, timeout).is_ok(), "no config.json: no logins");
    }

    #[test]
    fn a_login_names_the_registry_it_is_for() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("password");
        std::fs::write(&password, "secret\n").unwrap();
        let mut with_login = args(Some(dir.path().join("none")));
        with_login.registry_username = Some("me".into());
        with_login.registry_password_file = Some(password);
        let (storage, timeout) = (StorageConfig::default(), std::time::Duration::from_secs(5));
        let error = with_login.validate(&ComponentSource::Builtin, &storage, timeout).unwrap_err();
        assert!(error.to_string().contains("--registry-login-host"), "{error}");
        let oci = ComponentSource::parse("oci://127.0.0.1:5000/echo:v1").unwrap();
        let config = with_login.validate(&oci, &storage, timeout).unwrap();
        assert!(matches!(config.logins.login("127.0.0.1:5000"), crate::util::oci::Login::Basic { .. }));
        assert!(matches!(config.logins.login("other.example"), crate::util::oci::Login::Anonymous));
    }
}
