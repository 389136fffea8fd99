//! OCI image import.
//!
//! - [`blobs`]: the content-addressed blob store (sha256-verified while streaming).
//! - [`fetch`]: getting an image's manifest, config and layers into the blob store from a
//!   registry, a `docker save` archive, or an OCI layout (directory or tar).
//! - [`registry`]: the OCI distribution client (pull only).
//! - [`credentials`]: registry credentials from the Docker client configuration.
//! - [`tls`]: plain HTTP or HTTPS, trusted certificates, insecure registries.
//! - [`apply`]: applying layers to a directory without ever touching anything outside it.
#![forbid(unsafe_code)]

pub mod apply;
pub mod blobs;
pub mod credentials;
pub mod fetch;
pub mod manifest;
pub mod registry;
pub mod tls;

use std::path::PathBuf;

pub use apply::{apply_layer_reader, apply_layers, ApplyOptions, ApplyStats};
pub use blobs::BlobStore;
pub use fetch::fetch;
pub use manifest::{FetchOptions, FetchedImage, ImageConfig, Layer};

/// Import failures.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("i/o error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch { what: String, expected: String, actual: String },
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    #[error("invalid {what}: {message}")]
    Invalid { what: String, message: String },
    #[error("image has no linux/amd64 variant; it offers: {offered}")]
    NoPlatform { offered: String },
    #[error("no image tagged {tag:?} in {source_ref} (it has: {available})")]
    TagNotFound { source_ref: String, tag: String, available: String },
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },
    #[error("registry {registry}: authentication failed ({status}): {message}")]
    Unauthorized { registry: String, status: u16, message: String },
    #[error("registry configuration {path}: {message}")]
    RegistryConfig { path: PathBuf, message: String },
    #[error("credential helper {helper}: {message}")]
    CredentialHelper { helper: String, message: String },
    #[error("registry {registry}: {what} not found (404)")]
    NotFound { registry: String, what: String },
    #[error("layer entry {path:?} is unsafe: {reason}")]
    UnsafeEntry { path: String, reason: &'static str },
    #[error("layer {digest}: {message}")]
    Layer { digest: String, message: String },
}

/// Text from an archive or a tool, made fit for a terminal and a log: control characters are
/// escaped (an archive must not drive the user's terminal), binary junk (bytes that were not
/// UTF-8) is cut off at the field that held it, and the text is bounded.
pub(crate) fn printable(s: &str) -> String {
    let mut text = s;
    if let Some(bad) = s.find('\u{fffd}') {
        // "numeric field did not have utf-8 text: <bytes> when …": keep what precedes the bytes.
        text = s[..bad].rfind(": ").map(|i| &s[..i]).unwrap_or(&s[..bad]);
    }
    let mut out: String = text
        .chars()
        .take(300)
        .flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
        .collect();
    if text.len() < s.len() {
        out.push_str(" (binary data omitted: not an archive of this kind, or a damaged one)");
    } else if text.chars().count() > 300 {
        out.push('…');
    }
    out
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> OciError {
    let path = path.into();
    move |source| OciError::Io { path, source }
}

/// `sha256:<hex>` → `<hex>` if well-formed.
pub(crate) fn sha256_hex(digest: &str) -> Result<&str, OciError> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => Ok(h),
        _ => Err(OciError::Invalid { what: "digest".into(), message: format!("{digest:?} is not a sha256 digest") }),
    }
}

#[cfg(test)]
mod printable_tests {
    #[test]
    fn binary_junk_and_control_characters_never_reach_the_terminal() {
        let tar = "numeric field did not have utf-8 text: Y\u{fffd}\u{fffd}pm when getting cksum for \u{fffd}L";
        assert_eq!(
            super::printable(tar),
            "numeric field did not have utf-8 text (binary data omitted: not an archive of this kind, or a damaged one)"
        );
        assert_eq!(super::printable("a\x1b[31mred"), "a\\u{1b}[31mred");
        assert_eq!(super::printable("plain: ok"), "plain: ok");
        assert!(super::printable(&"x".repeat(1000)).chars().count() <= 301);
    }
}
