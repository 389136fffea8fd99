//! OCI distribution client (pull): manifests (OCI and Docker schema 2, indexes and manifest
//! lists), blobs streamed into the blob store and verified, bearer-token and basic auth with
//! credentials found as the Docker client finds them ([`crate::credentials`]). Basic credentials
//! are sent only after a Basic challenge; a bearer challenge is answered at the token service
//! with the username and password (GET) or the identity token (OAuth2 refresh-token POST).
//!
//! Built on `ureq` (blocking, small, rustls): an import is a sequence of requests, so an async
//! runtime would buy nothing here and cost build time. HTTPS, plain HTTP and which certificates
//! are trusted: [`crate::tls`]. Connect and read timeouts bound every request, so a hanging
//! registry is an error, not a hang.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use base64::Engine;
use ignite_api::reference::Reference;
use serde_json::Value;

use crate::blobs::BlobStore;
use crate::credentials::{self, ConfigDir, Credentials, Lookup};
use crate::manifest::{
    from_manifest, parse_json, pick_platform, FetchOptions, FetchedImage, MAX_JSON_BYTES, MAX_LAYER_BYTES,
    MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST,
};
use crate::{tls, OciError};

enum Auth {
    None,
    Basic,
    Bearer(String),
}

struct Client {
    agent: ureq::Agent,
    /// The registry as named in the reference (`docker.io`, `127.0.0.1:5000`).
    registry: String,
    /// Where it is reached (`registry-1.docker.io`, `127.0.0.1:5000`).
    host: String,
    repo: String,
    https: bool,
    /// Whether a registry that does not speak TLS may still be reached over plain HTTP (until
    /// the first answer settles the scheme).
    fallback_http: bool,
    certs_dir: PathBuf,
    creds: Lookup,
    auth: Auth,
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
    fn new(r: &Reference, opts: &FetchOptions) -> Result<Client, OciError> {
        let host = if r.domain == "docker.io" { "registry-1.docker.io".to_string() } else { r.domain.clone() };
        let t = tls::transport(&r.domain, &host, r.is_loopback_registry(), &opts.insecure_registries);
        let dir = ConfigDir::resolve(opts.registry_config_dir.as_deref(), opts.registry_config_origin.as_deref());
        let creds = credentials::lookup(&r.domain, dir.as_ref())?;
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(opts.connect_timeout)
            .timeout_read(opts.read_timeout)
            .redirects(5);
        if t.https {
            let certs = tls::host_certs(&opts.certs_dir, &r.domain)?;
            if !t.verify {
                tracing::warn!(registry = %r.domain, "insecure registry: its TLS certificate is not verified");
            }
            builder = builder.tls_config(tls::client_config(&r.domain, &host, &certs, t.verify)?);
        }
        let auth = match &creds {
            Lookup::Found(c) => c.registry_token.clone().map(Auth::Bearer).unwrap_or(Auth::None),
            Lookup::None(_) => Auth::None,
        };
        Ok(Client {
            agent: builder.build(),
            registry: r.domain.clone(),
            host,
            repo: r.path.clone(),
            https: t.https,
            fallback_http: t.fallback_http,
            certs_dir: opts.certs_dir.clone(),
            creds,
            auth,
        })
    }

    fn err(&self, message: String) -> OciError {
        OciError::Registry { registry: self.registry.clone(), message }
    }

    /// 401: which registry refused, and what was (not) sent and from where. Never a secret.
    fn unauthorized(&self, status: u16) -> OciError {
        let message = match (&self.creds, status) {
            (Lookup::Found(c), 403) => {
                format!("access to {} denied for {} from {}", self.repo, c.who(), c.source)
            }
            (Lookup::Found(c), _) => format!(
                "the registry refused the credentials of {} from {} (wrong username or password?)",
                c.who(),
                c.source
            ),
            (Lookup::None(why), 403) => format!("access to {} denied without credentials: {why}", self.repo),
            (Lookup::None(why), _) => format!(
                "the registry requires credentials and none were found: {why}; log in with `docker login {}` or \
                 pass the directory of a config.json that has them with --registry-config-dir",
                self.registry
            ),
        };
        OciError::Unauthorized { registry: self.registry.clone(), status, message }
    }

    /// A failed connection, with what to do about an untrusted certificate or a registry that
    /// does not speak TLS.
    fn transport_err(&self, what: &str, t: ureq::Transport) -> OciError {
        match tls::classify(&t) {
            tls::TlsFailure::Certificate(why) => self.err(format!(
                "{what}: TLS certificate not trusted ({why}): put the CA certificate that signed it in {}/{}/ca.crt, \
                 or list https://{} in {} (or --insecure-registry) to skip verification",
                self.certs_dir.display(),
                self.registry,
                self.registry,
                tls::INSECURE_REGISTRIES_ENV
            )),
            tls::TlsFailure::NotTls if self.https => self.err(format!(
                "{what}: {t} (the registry does not seem to speak TLS: list http://{} in {} or with \
                 --insecure-registry to reach it over plain HTTP)",
                self.registry,
                tls::INSECURE_REGISTRIES_ENV
            )),
            tls::TlsFailure::ClientCertificate(alert) => self.err(format!(
                "{what}: the registry refused the TLS handshake ({alert}): it may require a client certificate: \
                 put client.cert and client.key (signed by a CA it trusts) in {}/{}/",
                self.certs_dir.display(),
                self.registry
            )),
            tls::TlsFailure::Timeout => self.err(format!("{what}: timed out ({t})")),
            _ => self.err(format!("{what}: {t}")),
        }
    }

    fn basic(c: &Credentials) -> String {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
        format!("Basic {b}")
    }

    fn authenticate(&mut self, challenge: &str) -> Result<(), OciError> {
        if challenge.trim().is_empty() {
            return Err(self.unauthorized(401));
        }
        let Some((scheme, p)) = parse_challenge(challenge) else {
            return Err(self.err(format!("unsupported authentication challenge {challenge:?}")));
        };
        if scheme == "basic" {
            return match &self.creds {
                Lookup::Found(c) if c.has_password() => {
                    self.auth = Auth::Basic;
                    Ok(())
                }
                _ => Err(self.unauthorized(401)),
            };
        }
        if scheme != "bearer" {
            return Err(self.err(format!("unsupported authentication scheme {scheme:?}")));
        }
        let realm = p.get("realm").ok_or_else(|| self.err("token challenge without realm".into()))?.clone();
        let scope = p.get("scope").cloned().unwrap_or_else(|| format!("repository:{}:pull", self.repo));
        let creds = match &self.creds {
            Lookup::Found(c) => Some(c.clone()),
            Lookup::None(_) => None,
        };
        let res = match creds.as_ref() {
            Some(c) if c.identity_token.is_some() && !c.has_password() => {
                // OAuth2 refresh-token grant, as Docker does with an identity token.
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("client_id", "ignite"),
                    ("refresh_token", c.identity_token.as_deref().unwrap_or("")),
                    ("scope", scope.as_str()),
                ];
                if let Some(s) = p.get("service") {
                    form.push(("service", s.as_str()));
                }
                self.agent.post(&realm).send_form(&form)
            }
            _ => {
                let mut req = self.agent.get(&realm).query("scope", &scope);
                if let Some(s) = p.get("service") {
                    req = req.query("service", s);
                }
                if let Some(c) = creds.as_ref().filter(|c| c.has_password()) {
                    req = req.set("Authorization", &Self::basic(c));
                }
                req.call()
            }
        };
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(code @ (401 | 403), _)) => return Err(self.unauthorized(code)),
            Err(ureq::Error::Status(code, _)) => {
                return Err(self.err(format!("token service {realm}: HTTP {code}")));
            }
            Err(ureq::Error::Transport(t)) => return Err(self.transport_err("token request", t)),
        };
        let mut body = Vec::new();
        resp.into_reader().take(MAX_JSON_BYTES).read_to_end(&mut body).map_err(|e| self.err(e.to_string()))?;
        let v = parse_json(&body, "token response")?;
        let t = v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.err("token response without token".into()))?;
        self.auth = Auth::Bearer(t.to_string());
        Ok(())
    }

    /// GET with auth: answers one challenge (again when a token expires); the first request
    /// to a registry that may be plain HTTP settles the scheme.
    fn get(&mut self, path: &str, accept: &str, what: &str) -> Result<ureq::Response, OciError> {
        let mut challenged = false;
        loop {
            let url = format!("{}://{}/v2/{}/{path}", if self.https { "https" } else { "http" }, self.host, self.repo);
            let mut req = self.agent.get(&url).set("Accept", accept);
            match (&self.auth, &self.creds) {
                (Auth::Bearer(t), _) => req = req.set("Authorization", &format!("Bearer {t}")),
                (Auth::Basic, Lookup::Found(c)) => req = req.set("Authorization", &Self::basic(c)),
                _ => {}
            }
            let err = match req.call() {
                Ok(r) => {
                    self.fallback_http = false;
                    return Ok(r);
                }
                Err(ureq::Error::Transport(t)) => {
                    if self.https && self.fallback_http && tls::classify(&t) == tls::TlsFailure::NotTls {
                        tracing::debug!(registry = %self.registry, "no TLS: plain HTTP");
                        self.https = false;
                        self.fallback_http = false;
                        continue;
                    }
                    return Err(self.transport_err(what, t));
                }
                Err(ureq::Error::Status(code, r)) => (code, r),
            };
            self.fallback_http = false;
            match err {
                (401, r) if !challenged => {
                    challenged = true;
                    let ch = r.header("www-authenticate").unwrap_or("").to_string();
                    self.authenticate(&ch)?;
                }
                (code @ (401 | 403), _) => return Err(self.unauthorized(code)),
                (404, _) => return Err(OciError::NotFound { registry: self.registry.clone(), what: what.to_string() }),
                (code, r) => {
                    let mut body = String::new();
                    let _ = r.into_reader().take(4096).read_to_string(&mut body);
                    let hint = if code == 400 && !self.https && body.contains("HTTPS") {
                        format!(
                            " (the registry speaks HTTPS: list it as https://{} or trust its CA instead of http://)",
                            self.registry
                        )
                    } else {
                        String::new()
                    };
                    return Err(self.err(format!("{what}: HTTP {code} {}{hint}", body.trim())));
                }
            }
        }
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
    let mut c = Client::new(r, opts)?;
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

    /// One request a fake registry saw.
    #[derive(Debug, Clone)]
    struct Seen {
        line: String,
        authorization: Option<String>,
        body: String,
    }

    /// A plain-HTTP fake registry with a token service at /token: `/v2/…` answers 200 to
    /// `Bearer good` (or Basic for the basic variant) and 401 with a challenge otherwise. A
    /// connection that does not start with an HTTP request (a TLS handshake) is closed.
    fn fake_registry(basic: bool) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Seen>>>) {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (a, log) = (addr.clone(), seen.clone());
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = c.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if !buf[0].is_ascii_uppercase() {
                        break None;
                    }
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break Some(i + 4);
                    }
                };
                let Some(head_end) = head_end else { continue };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let header = |name: &str| {
                    head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                    })
                };
                let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = c.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let seen = Seen {
                    line: head.lines().next().unwrap_or("").to_string(),
                    authorization: header("authorization"),
                    body: String::from_utf8_lossy(&buf[head_end..]).to_string(),
                };
                log.lock().unwrap().push(seen.clone());
                let basic_ok = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("bob:secret"));
                let (status, extra, body) = if seen.line.contains(" /token") {
                    let ok = seen.line.starts_with("POST")
                        && seen.body.contains("grant_type=refresh_token")
                        && seen.body.contains("refresh_token=refresh-me")
                        || seen.authorization.as_deref() == Some(basic_ok.as_str());
                    if ok {
                        ("200 OK", String::new(), r#"{"access_token":"good"}"#.to_string())
                    } else {
                        ("401 Unauthorized", String::new(), String::new())
                    }
                } else {
                    let want = if basic { basic_ok.clone() } else { "Bearer good".to_string() };
                    if seen.authorization.as_deref() == Some(want.as_str()) {
                        ("200 OK", String::new(), "manifest".to_string())
                    } else if basic {
                        ("401 Unauthorized", "WWW-Authenticate: Basic realm=\"r\"\r\n".to_string(), String::new())
                    } else {
                        (
                            "401 Unauthorized",
                            format!("WWW-Authenticate: Bearer realm=\"http://{a}/token\",service=\"svc\"\r\n"),
                            String::new(),
                        )
                    }
                };
                let _ = c.write_all(
                    format!(
                        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        });
        (addr, seen)
    }

    fn client_for(addr: &str, config: &str, insecure: &[&str]) -> (tempfile::TempDir, Client) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), config.replace("ADDR", addr)).unwrap();
        let r = Reference::parse(&format!("{addr}/some/repo:1")).unwrap();
        let opts = FetchOptions {
            registry_config_dir: Some(d.path().to_path_buf()),
            insecure_registries: insecure.iter().map(|s| s.replace("ADDR", addr)).collect(),
            ..Default::default()
        };
        let c = Client::new(&r, &opts).unwrap();
        (d, c)
    }

    fn body(r: ureq::Response) -> String {
        r.into_string().unwrap()
    }

    #[test]
    fn identity_token_refresh_grant() {
        let (addr, seen) = fake_registry(false);
        let (_d, mut c) = client_for(&addr, r#"{"auths":{"ADDR":{"identitytoken":"refresh-me"}}}"#, &["http://ADDR"]);
        assert_eq!(body(c.get("manifests/1", "*/*", "manifest").unwrap()), "manifest");
        let seen = seen.lock().unwrap().clone();
        let token = seen.iter().find(|s| s.line.contains("/token")).expect("a token request");
        assert!(token.line.starts_with("POST"), "{token:?}");
        assert!(token.body.contains("scope=repository%3Asome%2Frepo%3Apull") && token.body.contains("service=svc"));
    }

    #[test]
    fn password_bearer_and_registry_token() {
        // Loopback and not listed: the TLS handshake is refused, plain HTTP follows.
        let (addr, seen) = fake_registry(false);
        let (_d, mut c) = client_for(&addr, r#"{"auths":{"ADDR":{"username":"bob","password":"secret"}}}"#, &[]);
        assert_eq!(body(c.get("manifests/1", "*/*", "manifest").unwrap()), "manifest");
        assert!(seen.lock().unwrap().iter().any(|s| s.line.starts_with("GET /token?")));
        // A registry token is sent as is: no token request.
        let (addr, seen) = fake_registry(false);
        let (_d, mut c) = client_for(&addr, r#"{"auths":{"ADDR":{"registrytoken":"good"}}}"#, &["http://ADDR"]);
        assert_eq!(body(c.get("manifests/1", "*/*", "manifest").unwrap()), "manifest");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        // Wrong password: said so, naming the user and where it came from, not the password.
        let (addr, _) = fake_registry(false);
        let (_d, mut c) =
            client_for(&addr, r#"{"auths":{"http://ADDR/v2/":{"username":"bob","password":"nope"}}}"#, &[]);
        let e = c.get("manifests/1", "*/*", "manifest").unwrap_err().to_string();
        assert!(
            e.contains("refused the credentials of user \"bob\"") && e.contains("/v2/") && !e.contains("nope"),
            "{e}"
        );
    }

    #[test]
    fn basic_credentials_only_after_a_challenge() {
        let (addr, seen) = fake_registry(true);
        let (_d, mut c) = client_for(&addr, r#"{"auths":{"ADDR":{"username":"bob","password":"secret"}}}"#, &["ADDR"]);
        assert_eq!(body(c.get("manifests/1", "*/*", "manifest").unwrap()), "manifest");
        assert_eq!(body(c.get("blobs/x", "*/*", "blob").unwrap()), "manifest");
        let seen = seen.lock().unwrap().clone();
        let auths: Vec<_> = seen.iter().map(|s| s.authorization.is_some()).collect();
        assert_eq!(auths, [false, true, true], "{seen:?}");
        // Without credentials: which registry, and where credentials were looked for.
        let (addr, _) = fake_registry(true);
        let (_d, mut c) = client_for(&addr, r#"{"auths":{}}"#, &[]);
        let e = c.get("manifests/1", "*/*", "manifest").unwrap_err().to_string();
        assert!(e.contains(&format!("registry {addr}: authentication failed (401)")), "{e}");
        assert!(e.contains("config.json has no credentials for"), "{e}");
    }
}
