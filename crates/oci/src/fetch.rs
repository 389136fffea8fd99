//! Getting an image's manifest, config and layers into the blob store, from any transport:
//! a registry (`registry`), an OCI layout or archive, a `docker save` archive.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use ignite_api::ImageRef;

use crate::blobs::BlobStore;
use crate::manifest::{
    descriptors, from_manifest, parse_config, parse_json, pick_platform, str_list, Descriptor, FetchOptions,
    FetchedImage, Layer, MAX_JSON_BYTES, MAX_LAYER_BYTES, MT_DOCKER_LIST, MT_OCI_INDEX,
};
use crate::{io_err, printable, sha256_hex, OciError};

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
