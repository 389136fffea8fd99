//! What every transport shares: limits, media types, fetch options, the fetched image (config
//! and layers), and reading manifests, indexes and configs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::blobs::BlobStore;
use crate::{sha256_hex, OciError};

/// Largest manifest, index or config accepted.
pub const MAX_JSON_BYTES: u64 = 4 << 20;
/// Largest single layer blob accepted.
pub const MAX_LAYER_BYTES: u64 = 32 << 30;

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// How to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Insecure registries: `http://HOST[:PORT]` (plain HTTP), `https://HOST[:PORT]` (HTTPS
    /// without certificate verification) or `HOST[:PORT]` (either); see [`crate::tls`].
    pub insecure_registries: Vec<String>,
    /// Directory with the Docker client configuration (`config.json`); default
    /// `$DOCKER_CONFIG`, else `~/.docker`.
    pub registry_config_dir: Option<PathBuf>,
    /// Where `registry_config_dir` came from, for messages (default `--registry-config-dir`).
    pub registry_config_origin: Option<String>,
    /// Docker's per-registry certificates directory (`/etc/docker/certs.d`).
    pub certs_dir: PathBuf,
    pub connect_timeout: std::time::Duration,
    pub read_timeout: std::time::Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            insecure_registries: Vec::new(),
            registry_config_dir: None,
            registry_config_origin: None,
            certs_dir: PathBuf::from(crate::tls::DEFAULT_CERTS_DIR),
            connect_timeout: std::time::Duration::from_secs(10),
            read_timeout: std::time::Duration::from_secs(60),
        }
    }
}

/// The parts of an image config ignite uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub architecture: String,
    pub os: String,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub diff_ids: Vec<String>,
}

/// One layer blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

/// An image whose blobs are all in the blob store.
#[derive(Debug, Clone)]
pub struct FetchedImage {
    /// Normalized source.
    pub source: String,
    /// Repository name for registry images (`docker.io/library/alpine`).
    pub repository: Option<String>,
    pub manifest_digest: String,
    pub config_digest: String,
    pub config: ImageConfig,
    pub layers: Vec<Layer>,
}

impl FetchedImage {
    /// Content id, as Ignite wrote it: `repo@sha256:…` for registry images, the manifest
    /// digest for local ones.
    pub fn id(&self) -> String {
        match &self.repository {
            Some(r) => format!("{r}@{}", self.manifest_digest),
            None => self.manifest_digest.clone(),
        }
    }

    pub fn total_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

pub(crate) fn parse_json(bytes: &[u8], what: &str) -> Result<Value, OciError> {
    serde_json::from_slice(bytes).map_err(|e| OciError::Invalid { what: what.into(), message: e.to_string() })
}

pub(crate) fn str_list(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default()
}

pub(crate) fn parse_config(bytes: &[u8]) -> Result<ImageConfig, OciError> {
    let v = parse_json(bytes, "image config")?;
    let c = &v["config"];
    let cfg = ImageConfig {
        architecture: v["architecture"].as_str().unwrap_or("").into(),
        os: v["os"].as_str().unwrap_or("").into(),
        env: str_list(&c["Env"]),
        entrypoint: str_list(&c["Entrypoint"]),
        cmd: str_list(&c["Cmd"]),
        working_dir: c["WorkingDir"].as_str().unwrap_or("").into(),
        user: c["User"].as_str().unwrap_or("").into(),
        diff_ids: str_list(&v["rootfs"]["diff_ids"]),
    };
    for d in &cfg.diff_ids {
        sha256_hex(d)?;
    }
    if !cfg.architecture.is_empty() && cfg.architecture != "amd64" {
        return Err(OciError::NoPlatform { offered: format!("{}/{}", cfg.os, cfg.architecture) });
    }
    Ok(cfg)
}

#[derive(Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    #[serde(default)]
    pub(crate) size: u64,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    pub(crate) annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

pub(crate) fn descriptors(v: &Value, key: &str, what: &str) -> Result<Vec<Descriptor>, OciError> {
    serde_json::from_value(v.get(key).cloned().unwrap_or(Value::Array(vec![])))
        .map_err(|e| OciError::Invalid { what: what.into(), message: e.to_string() })
}

/// Picks linux/amd64 from an index's manifests.
pub(crate) fn pick_platform(v: &Value) -> Result<(String, String), OciError> {
    let ms = descriptors(v, "manifests", "image index")?;
    let offered: Vec<String> =
        ms.iter().filter_map(|m| m.platform.as_ref().map(|p| format!("{}/{}", p.os, p.architecture))).collect();
    ms.into_iter()
        .find(|m| m.platform.as_ref().map(|p| p.os == "linux" && p.architecture == "amd64").unwrap_or(false))
        .map(|m| (m.digest, m.media_type))
        .ok_or(OciError::NoPlatform { offered: if offered.is_empty() { "nothing".into() } else { offered.join(", ") } })
}

/// Reads a manifest already in the blob store: its config and layers.
pub(crate) fn from_manifest(
    manifest_digest: String,
    manifest: &Value,
    blobs: &BlobStore,
    source: &str,
    repository: Option<String>,
) -> Result<FetchedImage, OciError> {
    let cfg_desc: Descriptor = serde_json::from_value(manifest["config"].clone())
        .map_err(|e| OciError::Invalid { what: "manifest config descriptor".into(), message: e.to_string() })?;
    let cfg_bytes = blobs.read(&cfg_desc.digest, MAX_JSON_BYTES)?;
    let config = parse_config(&cfg_bytes)?;
    let layers: Vec<Layer> = descriptors(manifest, "layers", "manifest layers")?
        .into_iter()
        .map(|d| Layer { digest: d.digest, media_type: d.media_type, size: d.size })
        .collect();
    for l in &layers {
        sha256_hex(&l.digest)?;
    }
    if !config.diff_ids.is_empty() && config.diff_ids.len() != layers.len() {
        return Err(OciError::Invalid {
            what: "image".into(),
            message: format!("{} layers but {} diff_ids", layers.len(), config.diff_ids.len()),
        });
    }
    Ok(FetchedImage {
        source: source.into(),
        repository,
        manifest_digest,
        config_digest: cfg_desc.digest,
        config,
        layers,
    })
}
