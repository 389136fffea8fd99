//! OCI distribution client (pull): manifests (OCI and Docker schema 2, indexes and manifest
//! lists), blobs streamed into the blob store and verified, bearer-token and basic auth with
//! credentials from the Docker client configuration (`auths`, `credHelpers`, `credsStore`).
//!
//! Built on `ureq` (blocking, small, rustls): an import is a sequence of requests, so an async
//! runtime would buy nothing here and cost build time. Plain HTTP is used for loopback
//! registries (as Docker does) and for hosts listed as insecure; HTTPS otherwise. Connect and
//! read timeouts bound every request, so a hanging registry is an error, not a hang.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use base64::Engine;
use ignite_api::reference::Reference;
use serde_json::Value;

use crate::blobs::BlobStore;
use crate::fetch::{
    from_manifest, parse_json, pick_platform, FetchOptions, FetchedImage, MAX_JSON_BYTES, MAX_LAYER_BYTES,
    MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST,
};
use crate::OciError;

struct Client {
    agent: ureq::Agent,
    base: String,
    registry: String,
    repo: String,
    creds: Option<(String, String)>,
    token: Option<String>,
}

/// Credentials for `host` from the Docker client configuration.
pub fn credentials(host: &str, config_dir: Option<&std::path::Path>) -> Option<(String, String)> {
    let dir = config_dir
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("DOCKER_CONFIG").map(PathBuf::from))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?;
    let bytes = std::fs::read(dir.join("config.json")).ok()?;
    let cfg: Value = serde_json::from_slice(&bytes).ok()?;
    let keys: Vec<String> = if host == "docker.io" {
        vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            "docker.io".into(),
            "registry-1.docker.io".into(),
        ]
    } else {
        vec![host.to_string(), format!("https://{host}"), format!("http://{host}")]
    };
    for k in &keys {
        if let Some(auth) = cfg["auths"][k]["auth"].as_str() {
            let raw = base64::engine::general_purpose::STANDARD.decode(auth).ok()?;
            let s = String::from_utf8(raw).ok()?;
            let (u, p) = s.split_once(':')?;
            return Some((u.into(), p.into()));
        }
    }
    let helper = keys.iter().find_map(|k| cfg["credHelpers"][k].as_str()).or(cfg["credsStore"].as_str())?;
    let mut cmd = std::process::Command::new(format!("docker-credential-{helper}"));
    cmd.arg("get");
    let out = ignite_proc::output(&mut cmd, Some(host.as_bytes()), ignite_proc::QUICK).ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some((v["Username"].as_str()?.into(), v["Secret"].as_str()?.into()))
}

fn parse_challenge(h: &str) -> Option<(String, BTreeMap<String, String>)> {
    let (scheme, rest) = h.split_once(' ')?;
    let mut params = BTreeMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_string(), q[end + 1..].trim_start_matches(',').trim_start())
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].to_string(), after[end..].trim_start_matches(',').trim_start())
        };
        params.insert(k.trim().to_ascii_lowercase(), v);
        s = next;
    }
    Some((scheme.to_ascii_lowercase(), params))
}

impl Client {
    fn new(r: &Reference, opts: &FetchOptions) -> Client {
        let plain = r.is_loopback_registry() || opts.insecure_registries.contains(&r.domain);
        let host = if r.domain == "docker.io" { "registry-1.docker.io".to_string() } else { r.domain.clone() };
        let base = format!("{}://{host}", if plain { "http" } else { "https" });
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(opts.connect_timeout)
            .timeout_read(opts.read_timeout)
            .redirects(5)
            .build();
        Client {
            agent,
            base,
            registry: r.domain.clone(),
            repo: r.path.clone(),
            creds: credentials(&r.domain, opts.registry_config_dir.as_deref()),
            token: None,
        }
    }

    fn err(&self, message: String) -> OciError {
        OciError::Registry { registry: self.registry.clone(), message }
    }

    fn authenticate(&mut self, challenge: &str) -> Result<(), OciError> {
        if challenge.trim().is_empty() {
            return Err(OciError::Unauthorized { registry: self.registry.clone(), status: 401 });
        }
        let Some((scheme, p)) = parse_challenge(challenge) else {
            return Err(self.err(format!("unsupported authentication challenge {challenge:?}")));
        };
        if scheme == "basic" {
            if self.creds.is_none() {
                return Err(OciError::Unauthorized { registry: self.registry.clone(), status: 401 });
            }
            return Ok(());
        }
        let realm = p.get("realm").ok_or_else(|| self.err("token challenge without realm".into()))?;
        let mut req = self.agent.get(realm);
        if let Some(s) = p.get("service") {
            req = req.query("service", s);
        }
        let scope = p.get("scope").cloned().unwrap_or_else(|| format!("repository:{}:pull", self.repo));
        req = req.query("scope", &scope);
        if let Some((u, pw)) = &self.creds {
            let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{pw}"));
            req = req.set("Authorization", &format!("Basic {b}"));
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(code, _)) => {
                return Err(OciError::Unauthorized { registry: self.registry.clone(), status: code })
            }
            Err(e) => return Err(self.err(format!("token request failed: {e}"))),
        };
        let mut body = Vec::new();
        resp.into_reader().take(MAX_JSON_BYTES).read_to_end(&mut body).map_err(|e| self.err(e.to_string()))?;
        let v = parse_json(&body, "token response")?;
        let t = v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .ok_or_else(|| self.err("token response without token".into()))?;
        self.token = Some(t.to_string());
        Ok(())
    }

    /// GET with auth; retries once after an auth challenge.
    fn get(&mut self, path: &str, accept: &str, what: &str) -> Result<ureq::Response, OciError> {
        let url = format!("{}/v2/{}/{path}", self.base, self.repo);
        for attempt in 0..2 {
            let mut req = self.agent.get(&url).set("Accept", accept);
            if let Some(t) = &self.token {
                req = req.set("Authorization", &format!("Bearer {t}"));
            } else if let Some((u, p)) = &self.creds {
                let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                req = req.set("Authorization", &format!("Basic {b}"));
            }
            match req.call() {
                Ok(r) => return Ok(r),
                Err(ureq::Error::Status(401, r)) if attempt == 0 => {
                    let ch = r.header("www-authenticate").unwrap_or("").to_string();
                    self.authenticate(&ch)?;
                }
                Err(ureq::Error::Status(401 | 403, _)) => {
                    return Err(OciError::Unauthorized { registry: self.registry.clone(), status: 401 })
                }
                Err(ureq::Error::Status(404, _)) => {
                    return Err(OciError::NotFound { registry: self.registry.clone(), what: what.to_string() })
                }
                Err(ureq::Error::Status(code, r)) => {
                    let mut body = String::new();
                    let _ = r.into_reader().take(4096).read_to_string(&mut body);
                    return Err(self.err(format!("{what}: HTTP {code} {}", body.trim())));
                }
                Err(ureq::Error::Transport(t)) => return Err(self.err(format!("{what}: {t}"))),
            }
        }
        Err(OciError::Unauthorized { registry: self.registry.clone(), status: 401 })
    }

    fn manifest(&mut self, reference: &str, blobs: &BlobStore) -> Result<(String, Value), OciError> {
        let accept = [MT_OCI_INDEX, MT_OCI_MANIFEST, MT_DOCKER_LIST, MT_DOCKER_MANIFEST].join(", ");
        let what = format!("manifest {}:{reference}", self.repo);
        let resp = self.get(&format!("manifests/{reference}"), &accept, &what)?;
        let expected = reference.starts_with("sha256:").then(|| reference.to_string());
        let (digest, _) = blobs.put(expected.as_deref(), resp.into_reader(), MAX_JSON_BYTES, &what)?;
        let v = parse_json(&blobs.read(&digest, MAX_JSON_BYTES)?, &what)?;
        Ok((digest, v))
    }

    fn blob(&mut self, digest: &str, blobs: &BlobStore, limit: u64) -> Result<(), OciError> {
        if blobs.has(digest) {
            return Ok(());
        }
        let what = format!("blob {digest}");
        let resp = self.get(&format!("blobs/{digest}"), "*/*", &what)?;
        blobs.put(Some(digest), resp.into_reader(), limit, &what)?;
        Ok(())
    }
}

/// Pulls `r` into `blobs`.
pub fn pull(r: &Reference, blobs: &BlobStore, opts: &FetchOptions) -> Result<FetchedImage, OciError> {
    let mut c = Client::new(r, opts);
    let reference = r.digest.clone().or_else(|| r.tag.clone()).unwrap_or_else(|| "latest".into());
    let (mut digest, mut v) = c.manifest(&reference, blobs)?;
    if v.get("manifests").is_some() {
        let (d, _) = pick_platform(&v)?;
        (digest, v) = c.manifest(&d, blobs)?;
    }
    if v.get("layers").is_none() {
        return Err(c.err(format!("unsupported manifest (schemaVersion {})", v["schemaVersion"])));
    }
    let cfg = v["config"]["digest"].as_str().ok_or_else(|| c.err("manifest without config".into()))?.to_string();
    c.blob(&cfg, blobs, MAX_JSON_BYTES)?;
    if let Some(layers) = v["layers"].as_array() {
        for l in layers {
            let d = l["digest"].as_str().ok_or_else(|| c.err("layer without digest".into()))?;
            crate::sha256_hex(d)?;
            c.blob(d, blobs, MAX_LAYER_BYTES)?;
        }
    }
    from_manifest(digest, &v, blobs, &r.normalized(), Some(r.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#).unwrap();
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["scope"], "repository:library/alpine:pull");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!((s.as_str(), p["realm"].as_str()), ("basic", "Registry Realm"));
    }

    #[test]
    fn docker_config_auths() {
        let d = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:secret");
        std::fs::write(
            d.path().join("config.json"),
            format!(r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        assert_eq!(credentials("127.0.0.1:5000", Some(d.path())), Some(("bob".into(), "secret".into())));
        assert_eq!(credentials("other:1", Some(d.path())), None);
    }
}
