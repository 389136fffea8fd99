//! Getting an image's manifest, config and layers into the blob store, from any transport.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use ignite_api::ImageRef;
use serde::Deserialize;
use serde_json::Value;

use crate::blobs::BlobStore;
use crate::{io_err, printable, sha256_hex, OciError};

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

/// Fetches `source` into `blobs`.
pub fn fetch(source: &ImageRef, blobs: &BlobStore, opts: &FetchOptions) -> Result<FetchedImage, OciError> {
    match source {
        ImageRef::Registry(r) => crate::registry::pull(r, blobs, opts),
        ImageRef::OciLayout { dir, tag } => from_layout(Path::new(dir), tag.as_deref(), blobs, &source.to_string()),
        ImageRef::OciArchive { path, tag } => {
            from_oci_archive(Path::new(path), tag.as_deref(), blobs, &source.to_string())
        }
        ImageRef::DockerArchive { path } => from_docker_archive(Path::new(path), blobs, &source.to_string()),
    }
}

pub(crate) fn parse_json(bytes: &[u8], what: &str) -> Result<Value, OciError> {
    serde_json::from_slice(bytes).map_err(|e| OciError::Invalid { what: what.into(), message: e.to_string() })
}

fn str_list(v: &Value) -> Vec<String> {
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
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

fn descriptors(v: &Value, key: &str, what: &str) -> Result<Vec<Descriptor>, OciError> {
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

/// Copies a blob from an OCI layout directory into the store (verified).
fn layout_blob(dir: &Path, digest: &str, blobs: &BlobStore, limit: u64) -> Result<(), OciError> {
    let p = dir.join("blobs/sha256").join(sha256_hex(digest)?);
    let f = std::fs::File::open(&p).map_err(io_err(&p))?;
    blobs.put(Some(digest), f, limit, &format!("blob {digest} in {}", dir.display()))?;
    Ok(())
}

fn from_layout(dir: &Path, tag: Option<&str>, blobs: &BlobStore, source: &str) -> Result<FetchedImage, OciError> {
    let layout = dir.join("oci-layout");
    if !layout.is_file() {
        return Err(OciError::Invalid {
            what: format!("OCI layout {}", dir.display()),
            message: "no oci-layout file".into(),
        });
    }
    let idx_path = dir.join("index.json");
    let mut idx_bytes = Vec::new();
    std::fs::File::open(&idx_path)
        .map_err(io_err(&idx_path))?
        .take(MAX_JSON_BYTES)
        .read_to_end(&mut idx_bytes)
        .map_err(io_err(&idx_path))?;
    let index = parse_json(&idx_bytes, "index.json")?;
    let ms = descriptors(&index, "manifests", "index.json")?;
    let chosen = match tag {
        Some(t) => {
            ms.iter().find(|m| m.annotations.get("org.opencontainers.image.ref.name").map(String::as_str) == Some(t))
        }
        None if ms.len() == 1 => ms.first(),
        None => ms
            .iter()
            .find(|m| m.annotations.get("org.opencontainers.image.ref.name").map(String::as_str) == Some("latest")),
    };
    let Some(desc) = chosen else {
        let available: Vec<&str> = ms
            .iter()
            .filter_map(|m| m.annotations.get("org.opencontainers.image.ref.name").map(String::as_str))
            .collect();
        return Err(OciError::TagNotFound {
            source_ref: source.into(),
            tag: tag.unwrap_or("latest").into(),
            available: if available.is_empty() { "no tags".into() } else { available.join(", ") },
        });
    };
    let (mut digest, mut mt) = (desc.digest.clone(), desc.media_type.clone());
    for _ in 0..2 {
        layout_blob(dir, &digest, blobs, MAX_JSON_BYTES)?;
        let v = parse_json(&blobs.read(&digest, MAX_JSON_BYTES)?, "manifest")?;
        let media = v["mediaType"].as_str().unwrap_or(&mt).to_string();
        if media == MT_OCI_INDEX || media == MT_DOCKER_LIST || v.get("manifests").is_some() {
            (digest, mt) = pick_platform(&v)?;
            continue;
        }
        let cfg: Descriptor = serde_json::from_value(v["config"].clone())
            .map_err(|e| OciError::Invalid { what: "manifest".into(), message: e.to_string() })?;
        layout_blob(dir, &cfg.digest, blobs, MAX_JSON_BYTES)?;
        for l in descriptors(&v, "layers", "manifest layers")? {
            layout_blob(dir, &l.digest, blobs, MAX_LAYER_BYTES)?;
        }
        return from_manifest(digest, &v, blobs, source, None);
    }
    Err(OciError::Invalid { what: "image index".into(), message: "nested too deeply".into() })
}

/// Extracts only the layout's own files (oci-layout, index.json, blobs/sha256/<hex>) from an
/// oci-archive into a scratch directory, then reads it as a layout.
fn from_oci_archive(path: &Path, tag: Option<&str>, blobs: &BlobStore, source: &str) -> Result<FetchedImage, OciError> {
    let scratch = blobs
        .path(&format!("sha256:{}", "0".repeat(64)))?
        .with_file_name(format!(".oci-archive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(scratch.join("blobs/sha256")).map_err(io_err(&scratch))?;
    let res = (|| {
        let f = std::fs::File::open(path).map_err(io_err(path))?;
        let mut ar = tar::Archive::new(f);
        for e in ar
            .entries()
            .map_err(|e| OciError::Invalid { what: path.display().to_string(), message: printable(&e.to_string()) })?
        {
            let mut e = e.map_err(|e| OciError::Invalid {
                what: path.display().to_string(),
                message: printable(&e.to_string()),
            })?;
            let name = String::from_utf8_lossy(&e.path_bytes()).trim_start_matches("./").to_string();
            let dest = match name.as_str() {
                "oci-layout" | "index.json" => scratch.join(&name),
                n if n.starts_with("blobs/sha256/") && sha256_hex(&format!("sha256:{}", &n[13..])).is_ok() => {
                    scratch.join(n)
                }
                _ => continue,
            };
            if !e.header().entry_type().is_file() {
                continue;
            }
            let mut out = std::fs::File::create(&dest).map_err(io_err(&dest))?;
            std::io::copy(&mut (&mut e).take(MAX_LAYER_BYTES), &mut out).map_err(io_err(&dest))?;
        }
        from_layout(&scratch, tag, blobs, source)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    res
}

/// Reads a `docker save` archive: manifest.json names the config and the layer tars.
fn from_docker_archive(path: &Path, blobs: &BlobStore, source: &str) -> Result<FetchedImage, OciError> {
    let bad = |m: String| OciError::Invalid { what: format!("docker archive {}", path.display()), message: m };
    // Pass 1: every regular file into the blob store, remembering name → digest.
    let mut names: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut ar = tar::Archive::new(f);
    for e in ar.entries().map_err(|e| bad(printable(&e.to_string())))? {
        let e = e.map_err(|e| bad(printable(&e.to_string())))?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8_lossy(&e.path_bytes()).trim_start_matches("./").to_string();
        let (digest, size) = blobs.put(None, e, MAX_LAYER_BYTES, &format!("{name} in {}", path.display()))?;
        names.insert(name, (digest, size));
    }
    let (mdig, _) = names.get("manifest.json").ok_or_else(|| bad("no manifest.json".into()))?;
    let manifest = parse_json(&blobs.read(mdig, MAX_JSON_BYTES)?, "manifest.json")?;
    let entry =
        manifest.as_array().and_then(|a| a.first()).ok_or_else(|| bad("manifest.json lists no image".into()))?;
    let cfg_name = entry["Config"].as_str().ok_or_else(|| bad("manifest.json has no Config".into()))?;
    let (cfg_digest, cfg_size) = names.get(cfg_name).cloned().ok_or_else(|| bad(format!("{cfg_name} missing")))?;
    let config = parse_config(&blobs.read(&cfg_digest, MAX_JSON_BYTES)?)?;
    let mut layers = Vec::new();
    for l in str_list(&entry["Layers"]) {
        let (d, s) = names.get(&l).cloned().ok_or_else(|| bad(format!("layer {l} missing")))?;
        layers.push(Layer { digest: d, media_type: "application/vnd.docker.image.rootfs.diff.tar".into(), size: s });
    }
    if layers.is_empty() {
        return Err(bad("the image has no layers".into()));
    }
    // The image id of a docker archive is its config digest; the manifest digest is
    // synthesized from it so that re-imports of one archive agree.
    let _ = cfg_size;
    Ok(FetchedImage {
        source: source.into(),
        repository: None,
        manifest_digest: cfg_digest.clone(),
        config_digest: cfg_digest,
        config,
        layers,
    })
}
