//! The host configuration (`/etc/ignite/config.yaml`, Ignite's `Configuration` kind): where it
//! is read from and what it defaults.

use std::io::Read;
use std::path::{Path, PathBuf};

use ignite_api::decode::MAX_MANIFEST_BYTES;
use ignite_api::validate::validate_configuration;
use ignite_api::{decode_object, ConfigurationSpec, DecodeError, Object, ValidationErrors};

/// Where Ignite looks for its configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ignite/config.yaml";

/// Where the configuration in effect came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// No file: built-in defaults.
    Defaults,
    /// The default path existed.
    DefaultFile(PathBuf),
    /// `--ignite-config PATH`.
    Explicit(PathBuf),
}

/// A configuration and its source.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub spec: ConfigurationSpec,
    pub source: ConfigSource,
}

impl LoadedConfig {
    /// The id prefix (`ignite` unless configured).
    pub fn id_prefix(&self) -> &str {
        if self.spec.id_prefix.is_empty() {
            "ignite"
        } else {
            &self.spec.id_prefix
        }
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read ignite configuration {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ignite configuration {path} is too large (at most {MAX_MANIFEST_BYTES} bytes)")]
    TooLarge { path: PathBuf },
    #[error("invalid ignite configuration {path}")]
    Decode {
        path: PathBuf,
        #[source]
        source: Box<DecodeError>,
    },
    #[error("ignite configuration {path} holds a {kind}, expected kind Configuration")]
    WrongKind { path: PathBuf, kind: &'static str },
    #[error("invalid ignite configuration {path}")]
    Invalid { path: PathBuf, source: ValidationErrors },
}

/// Loads the configuration: `explicit` if given (it must exist), else the default path if it
/// exists, else built-in defaults.
pub fn load_configuration(explicit: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
    let (path, source) = match explicit {
        Some(p) => (p.to_path_buf(), ConfigSource::Explicit(p.to_path_buf())),
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG_PATH);
            if !p.exists() {
                return Ok(LoadedConfig { spec: ConfigurationSpec::default(), source: ConfigSource::Defaults });
            }
            (p.clone(), ConfigSource::DefaultFile(p))
        }
    };
    let bytes = read_bounded(&path)?;
    let obj =
        decode_object(&bytes).map_err(|source| ConfigError::Decode { path: path.clone(), source: Box::new(source) })?;
    let spec = match obj {
        Object::Configuration(c) => c.spec,
        other => return Err(ConfigError::WrongKind { path, kind: other.kind() }),
    };
    validate_configuration(&spec).map_err(|source| ConfigError::Invalid { path: path.clone(), source })?;
    Ok(LoadedConfig { spec, source })
}

/// Reads a manifest file of at most [`MAX_MANIFEST_BYTES`].
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let f = std::fs::File::open(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    let mut buf = Vec::new();
    f.take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|source| ConfigError::Read { path: path.into(), source })?;
    if buf.len() > MAX_MANIFEST_BYTES {
        return Err(ConfigError::TooLarge { path: path.into() });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.yaml");
        std::fs::write(&p, "apiVersion: ignite.weave.works/v1alpha4\nkind: Configuration\nmetadata: {name: t}\nspec:\n  runtime: containerd\n  networkPlugin: cni\n  vmDefaults: {memory: 2GB, diskSize: 3GB, cpus: 2}\n  idPrefix: acme\n").unwrap();
        let c = load_configuration(Some(&p)).unwrap();
        assert_eq!(c.spec.vm_defaults.cpus, 2);
        assert_eq!(c.id_prefix(), "acme");
        std::fs::write(&p, "apiVersion: ignite.weave.works/v1alpha4\nkind: VM\nmetadata: {name: t}\nspec: {}\n")
            .unwrap();
        assert!(matches!(load_configuration(Some(&p)), Err(ConfigError::WrongKind { .. })));
        assert!(matches!(load_configuration(Some(&d.path().join("missing"))), Err(ConfigError::Read { .. })));
    }
}
