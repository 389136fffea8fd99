//! Image and kernel source references.
//!
//! A source is written with the containers-image transport names: a bare reference or
//! `docker://REF` names a registry image; `docker-archive:PATH`, `oci:DIR[:TAG]` and
//! `oci-archive:PATH[:TAG]` name local files. Registry references are normalized as Docker
//! does (`alpine` → `docker.io/library/alpine:latest`) and printed in the short ("familiar")
//! form Weave Ignite printed (`alpine:latest`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The default registry, as Docker's.
pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DOMAIN: &str = "index.docker.io";
const OFFICIAL_NAMESPACE: &str = "library";
const MAX_NAME_LEN: usize = 255;

/// Why a reference was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("invalid image reference {0:?}: it is empty")]
    Empty(String),
    #[error("invalid image reference {input:?}: repository name must be lowercase")]
    Uppercase { input: String },
    #[error("invalid image reference {input:?}: {reason}")]
    Syntax { input: String, reason: &'static str },
    #[error("invalid image reference {input:?}: the {transport}: transport needs a path")]
    MissingPath { input: String, transport: &'static str },
}

/// A registry image reference, normalized.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// Registry host[:port], e.g. `docker.io`, `127.0.0.1:5000`.
    pub domain: String,
    /// Repository path, e.g. `library/alpine`.
    pub path: String,
    /// Tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// `algo:hex` content digest, when pinned.
    pub digest: Option<String>,
}

impl Reference {
    /// `domain/path` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The fully qualified form, e.g. `docker.io/library/alpine:latest`.
    pub fn normalized(&self) -> String {
        let mut s = self.name();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// The short form Docker and Ignite print, e.g. `alpine:latest`.
    pub fn familiar(&self) -> String {
        let mut s = if self.domain == DEFAULT_DOMAIN {
            self.path.strip_prefix("library/").filter(|p| !p.contains('/')).unwrap_or(&self.path).to_string()
        } else {
            self.name()
        };
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// Whether the registry is on a loopback address (plain HTTP allowed, as Docker does).
    pub fn is_loopback_registry(&self) -> bool {
        let host = host_of(&self.domain);
        host == "localhost" || host.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
    }

    /// Parse a Docker-style reference (no transport prefix).
    pub fn parse(input: &str) -> Result<Reference, RefError> {
        let syntax = |reason| RefError::Syntax { input: input.to_string(), reason };
        if input.is_empty() {
            return Err(RefError::Empty(input.into()));
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(syntax("it contains whitespace or control characters"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => {
                validate_digest(d).map_err(syntax)?;
                (r, Some(d.to_string()))
            }
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&rest[..i], Some(&rest[i + 1..]))
            }
            None => (rest, None),
        };
        if let Some(t) = tag {
            validate_tag(t).map_err(syntax)?;
        }
        if name.is_empty() {
            return Err(syntax("repository name is empty"));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first.to_string(), remainder.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        validate_domain(&domain).map_err(syntax)?;
        let domain = if domain == LEGACY_DOMAIN { DEFAULT_DOMAIN.to_string() } else { domain };
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(RefError::Uppercase { input: input.into() });
        }
        for comp in path.split('/') {
            validate_path_component(comp).map_err(syntax)?;
        }
        let path =
            if domain == DEFAULT_DOMAIN && !path.contains('/') { format!("{OFFICIAL_NAMESPACE}/{path}") } else { path };
        if domain.len() + 1 + path.len() > MAX_NAME_LEN {
            return Err(syntax("repository name is longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference { domain, path, tag, digest })
    }
}

fn host_of(domain: &str) -> &str {
    if let Some(rest) = domain.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    domain.rsplit_once(':').map(|(h, _)| h).unwrap_or(domain)
}

fn validate_domain(d: &str) -> Result<(), &'static str> {
    if d.is_empty() {
        return Err("registry host is empty");
    }
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("unterminated IPv6 registry address")?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("invalid IPv6 registry address");
        }
        (None, after.strip_prefix(':'))
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        }
    };
    if let Some(h) = host {
        let ok = !h.is_empty()
            && h.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !ok {
            return Err("invalid registry host");
        }
    }
    if let Some(p) = port {
        if p.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
            return Err("invalid registry port");
        }
    }
    Ok(())
}

fn validate_path_component(c: &str) -> Result<(), &'static str> {
    // [a-z0-9]+ ((\.|_|__|-+)[a-z0-9]+)*
    if c.is_empty() {
        return Err("repository path has an empty component");
    }
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err("repository path components must start and end with a lowercase letter or digit");
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return Err("repository path has an invalid character or separator");
        }
    }
    Ok(())
}

fn validate_tag(t: &str) -> Result<(), &'static str> {
    let b = t.as_bytes();
    if b.is_empty() || b.len() > 128 {
        return Err("tag must be 1 to 128 characters");
    }
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    if !word(b[0]) || !b.iter().all(|&x| word(x) || x == b'.' || x == b'-') {
        return Err("tag may contain only letters, digits, '_', '.' and '-' and not start with '.' or '-'");
    }
    Ok(())
}

fn validate_digest(d: &str) -> Result<(), &'static str> {
    let (algo, hex) = d.split_once(':').ok_or("digest must be algorithm:hex")?;
    let hex_ok =
        |h: &str, n: usize| h.len() == n && h.bytes().all(|x| x.is_ascii_digit() || (b'a'..=b'f').contains(&x));
    match algo {
        "sha256" if hex_ok(hex, 64) => Ok(()),
        "sha512" if hex_ok(hex, 128) => Ok(()),
        "sha256" | "sha512" => Err("digest has the wrong length or non-hex characters"),
        _ => Err("unsupported digest algorithm (use sha256)"),
    }
}

/// Where an image or kernel comes from.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ImageRef {
    /// A registry image (`alpine`, `docker://127.0.0.1:5000/x:1`).
    Registry(Reference),
    /// A `docker save` tarball.
    DockerArchive { path: String },
    /// An OCI image layout directory, optionally with a tag (ref.name annotation).
    OciLayout { dir: String, tag: Option<String> },
    /// An OCI image layout packed in a tar file.
    OciArchive { path: String, tag: Option<String> },
}

impl ImageRef {
    /// The canonical, fully qualified form used as the store key (one image per source).
    pub fn normalized(&self) -> String {
        match self {
            ImageRef::Registry(r) => r.normalized(),
            other => other.to_string(),
        }
    }

    /// The registry reference, if this is one.
    pub fn registry(&self) -> Option<&Reference> {
        match self {
            ImageRef::Registry(r) => Some(r),
            _ => None,
        }
    }
}

fn split_path_tag(s: &str) -> (String, Option<String>) {
    // `DIR:TAG`: a colon after the last '/' with a valid tag after it.
    let last_slash = s.rfind('/').map(|i| i + 1).unwrap_or(0);
    if let Some(i) = s[last_slash..].rfind(':') {
        let i = last_slash + i;
        let tag = &s[i + 1..];
        if validate_tag(tag).is_ok() && i > 0 {
            return (s[..i].to_string(), Some(tag.to_string()));
        }
    }
    (s.to_string(), None)
}

impl FromStr for ImageRef {
    type Err = RefError;

    fn from_str(input: &str) -> Result<ImageRef, RefError> {
        let missing = |transport| RefError::MissingPath { input: input.into(), transport };
        if let Some(rest) = input.strip_prefix("docker://") {
            return Ok(ImageRef::Registry(Reference::parse(rest)?));
        }
        if let Some(rest) = input.strip_prefix("docker-archive:") {
            if rest.is_empty() {
                return Err(missing("docker-archive"));
            }
            return Ok(ImageRef::DockerArchive { path: rest.to_string() });
        }
        if let Some(rest) = input.strip_prefix("oci-archive:") {
            let (path, tag) = split_path_tag(rest);
            if path.is_empty() {
                return Err(missing("oci-archive"));
            }
            return Ok(ImageRef::OciArchive { path, tag });
        }
        if let Some(rest) = input.strip_prefix("oci:") {
            let (dir, tag) = split_path_tag(rest);
            if dir.is_empty() {
                return Err(missing("oci"));
            }
            return Ok(ImageRef::OciLayout { dir, tag });
        }
        Ok(ImageRef::Registry(Reference::parse(input)?))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry(r) => f.write_str(&r.familiar()),
            ImageRef::DockerArchive { path } => write!(f, "docker-archive:{path}"),
            ImageRef::OciLayout { dir, tag: None } => write!(f, "oci:{dir}"),
            ImageRef::OciLayout { dir, tag: Some(t) } => write!(f, "oci:{dir}:{t}"),
            ImageRef::OciArchive { path, tag: None } => write!(f, "oci-archive:{path}"),
            ImageRef::OciArchive { path, tag: Some(t) } => write!(f, "oci-archive:{path}:{t}"),
        }
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageRef({})", self.normalized())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({})", self.normalized())
    }
}

impl Serialize for ImageRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ImageRef, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(s: &str) -> String {
        s.parse::<ImageRef>().unwrap().normalized()
    }

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(norm("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(norm("alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(norm("weaveworks/ignite-ubuntu"), "docker.io/weaveworks/ignite-ubuntu:latest");
        assert_eq!(norm("docker.io/library/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(norm("index.docker.io/library/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(norm("docker://127.0.0.1:5000/busybox:1"), "127.0.0.1:5000/busybox:1");
        assert_eq!(norm("localhost/foo"), "localhost/foo:latest");
        assert_eq!(norm("ghcr.io/a/b/c:v1.2-x_y"), "ghcr.io/a/b/c:v1.2-x_y");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(norm(&format!("alpine@{d}")), format!("docker.io/library/alpine@{d}"));
        assert_eq!(norm(&format!("alpine:3@{d}")), format!("docker.io/library/alpine:3@{d}"));
    }

    #[test]
    fn familiar_form() {
        let r: ImageRef = "docker.io/library/alpine".parse().unwrap();
        assert_eq!(r.to_string(), "alpine:latest");
        let r: ImageRef = "weaveworks/ignite-ubuntu".parse().unwrap();
        assert_eq!(r.to_string(), "weaveworks/ignite-ubuntu:latest");
        let r: ImageRef = "127.0.0.1:5000/busybox".parse().unwrap();
        assert_eq!(r.to_string(), "127.0.0.1:5000/busybox:latest");
        assert!(r.registry().unwrap().is_loopback_registry());
        assert!(!"ghcr.io/a".parse::<ImageRef>().unwrap().registry().unwrap().is_loopback_registry());
    }

    #[test]
    fn transports() {
        assert_eq!(
            "oci:/tmp/layout:v1".parse::<ImageRef>().unwrap(),
            ImageRef::OciLayout { dir: "/tmp/layout".into(), tag: Some("v1".into()) }
        );
        assert_eq!(
            "oci:/tmp/layout".parse::<ImageRef>().unwrap(),
            ImageRef::OciLayout { dir: "/tmp/layout".into(), tag: None }
        );
        assert_eq!(
            "docker-archive:/x/y.tar".parse::<ImageRef>().unwrap(),
            ImageRef::DockerArchive { path: "/x/y.tar".into() }
        );
        assert_eq!(
            "oci-archive:img.tar:latest".parse::<ImageRef>().unwrap(),
            ImageRef::OciArchive { path: "img.tar".into(), tag: Some("latest".into()) }
        );
        assert!("oci:".parse::<ImageRef>().is_err());
        assert!("docker-archive:".parse::<ImageRef>().is_err());
    }

    #[test]
    fn rejects_bad() {
        for bad in [
            "",
            "Alpine",
            "alpine:",
            "alpine:-x",
            "a b",
            "alpine@sha256:xyz",
            "alpine@md5:aa",
            "-a/b",
            "a//b",
            "a/b/",
            "exa mple.com/x",
            "example.com:0/x",
            "example.com:99999/x",
            "a..b",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad} should fail");
        }
        assert!(matches!(Reference::parse("Foo/Bar"), Err(RefError::Syntax { .. } | RefError::Uppercase { .. })));
        assert!(matches!(Reference::parse("library/Alpine"), Err(RefError::Uppercase { .. })));
    }

    proptest! {
        #[test]
        fn never_panics(input in "\\PC{0,64}") {
            let _ = input.parse::<ImageRef>();
        }

        #[test]
        fn normalized_is_fixed_point(
            ns in "[a-z0-9]{1,8}",
            repo in "[a-z0-9]{1,8}([._-][a-z0-9]{1,4})?",
            tag in "[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,10}",
        ) {
            let r: ImageRef = format!("{ns}/{repo}:{tag}").parse().unwrap();
            let again: ImageRef = r.normalized().parse().unwrap();
            prop_assert_eq!(&again, &r);
            let fam: ImageRef = r.to_string().parse().unwrap();
            prop_assert_eq!(fam, r);
        }
    }
}
