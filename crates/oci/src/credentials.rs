//! Registry credentials as the Docker client finds them.
//!
//! The directory holding `config.json`: `--registry-config-dir` > the Configuration's
//! `spec.registryConfigDir` (both passed in by the caller) > `$DOCKER_CONFIG` > `~/.docker`.
//! In it, for a registry host:
//! 1. `credHelpers[host]`, else `credsStore`: the program `docker-credential-<name> get` is run
//!    with the server address on its standard input and prints `{"Username", "Secret"}`
//!    (`Username` `<token>` means the secret is an identity token). A helper that is not
//!    installed, fails, hangs or prints garbage is an error naming it; a helper that answers
//!    "credentials not found" means no credentials, as for Docker.
//! 2. otherwise `auths`: the entry keyed by the host itself, else any entry whose key's host part
//!    is the host (`https://host:port`, `http://host:port/v2/`, ...). An entry holds `auth`
//!    (base64 of `user:password`) or `username`/`password`, and may hold `identitytoken` (an
//!    OAuth2 refresh token for the token service) or `registrytoken` (a bearer token sent to
//!    the registry as is).
//!
//! Docker Hub (`docker.io`) is keyed `https://index.docker.io/v1/`; `index.docker.io`,
//! `docker.io` and `registry-1.docker.io` are accepted too.
//!
//! A malformed `config.json` is an error naming the file; a missing one means no credentials.
//! Secrets never appear in errors or in `Debug` output.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use crate::OciError;

/// Docker Hub's key in `config.json`.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";
/// What a helper prints when it has nothing for a server (docker-credential-helpers).
const HELPER_NOT_FOUND: &str = "credentials not found in native keychain";
/// Largest `config.json` read.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Where the Docker client configuration is read from, and why there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDir {
    pub dir: PathBuf,
    /// Where the directory came from: `--registry-config-dir`, `spec.registryConfigDir of
    /// FILE`, `DOCKER_CONFIG`, or `the default ~/.docker`.
    pub origin: String,
}

impl ConfigDir {
    /// `explicit` (with its origin) > `$DOCKER_CONFIG` > `$HOME/.docker`.
    pub fn resolve(explicit: Option<&Path>, origin: Option<&str>) -> Option<ConfigDir> {
        if let Some(d) = explicit {
            return Some(ConfigDir {
                dir: d.to_path_buf(),
                origin: origin.unwrap_or("--registry-config-dir").to_string(),
            });
        }
        if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            return Some(ConfigDir { dir: d.into(), origin: "DOCKER_CONFIG".into() });
        }
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
        Some(ConfigDir { dir: PathBuf::from(home).join(".docker"), origin: "the default ~/.docker".into() })
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// `FILE` + what + `(registry configuration directory from ORIGIN)`.
    fn say(&self, what: &str) -> String {
        format!("{} {what} (registry configuration directory from {})", self.file().display(), self.origin)
    }
}

/// Credentials for one registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// OAuth2 refresh token for the registry's token service (`identitytoken`).
    pub identity_token: Option<String>,
    /// Bearer token for the registry itself (`registrytoken`).
    pub registry_token: Option<String>,
    /// Where they were found, for messages: `auths["KEY"] in FILE` or the helper's name.
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &if self.password.is_empty() { "" } else { "<redacted>" })
            .field("identity_token", &self.identity_token.as_ref().map(|_| "<redacted>"))
            .field("registry_token", &self.registry_token.as_ref().map(|_| "<redacted>"))
            .field("source", &self.source)
            .finish()
    }
}

impl Credentials {
    /// Whether there is a username and password to send (Basic, or to the token service).
    pub fn has_password(&self) -> bool {
        !self.username.is_empty() || !self.password.is_empty()
    }

    /// Who, for messages: `user "bob"` or `an identity token`.
    pub fn who(&self) -> String {
        if self.has_password() {
            format!("user {:?}", self.username)
        } else if self.identity_token.is_some() {
            "an identity token".into()
        } else {
            "a registry token".into()
        }
    }
}

/// The outcome of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Credentials),
    /// No credentials; the reason says where they were looked for.
    None(String),
}

/// `http://host:port/v2/` → `host:port` (Docker's `ConvertToHostname`).
pub fn key_host(key: &str) -> &str {
    let s = key.strip_prefix("http://").or_else(|| key.strip_prefix("https://")).unwrap_or(key);
    s.split('/').next().unwrap_or(s)
}

/// The keys under which `host`'s credentials may be stored, best first, and the server
/// address a credential helper is asked for.
fn keys_for(host: &str) -> (Vec<String>, String) {
    if matches!(host, "docker.io" | "index.docker.io" | "registry-1.docker.io") {
        (
            vec![DOCKER_HUB_KEY.into(), "index.docker.io".into(), "docker.io".into(), "registry-1.docker.io".into()],
            DOCKER_HUB_KEY.into(),
        )
    } else {
        (vec![host.to_string()], host.to_string())
    }
}

/// The entry of `map` for `host`: an exact key first, then any key whose host part matches.
fn find_entry<'a>(map: &'a serde_json::Map<String, Value>, keys: &[String]) -> Option<(&'a String, &'a Value)> {
    for k in keys {
        if let Some(e) = map.get_key_value(k) {
            return Some(e);
        }
    }
    for k in keys {
        let want = key_host(k).to_ascii_lowercase();
        if let Some(e) = map.iter().find(|(key, _)| key_host(key).to_ascii_lowercase() == want) {
            return Some(e);
        }
    }
    None
}

/// Reads `dir/config.json`: `None` when it does not exist.
fn read_config(dir: &ConfigDir) -> Result<Option<serde_json::Map<String, Value>>, OciError> {
    use std::io::Read;
    let path = dir.file();
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(OciError::Io { path, source }),
    };
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes).map_err(crate::io_err(&path))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(OciError::RegistryConfig { path, message: format!("larger than {MAX_CONFIG_BYTES} bytes") });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        // Docker reads an empty file as an empty configuration.
        return Ok(Some(serde_json::Map::new()));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(OciError::RegistryConfig { path, message: "not a JSON object".into() }),
        Err(e) => Err(OciError::RegistryConfig { path, message: format!("invalid JSON: {e}") }),
    }
}

/// Credentials for registry `host` (`host[:port]`, or `docker.io`).
pub fn lookup(host: &str, dir: Option<&ConfigDir>) -> Result<Lookup, OciError> {
    let Some(dir) = dir else {
        return Ok(Lookup::None(
            "no registry configuration directory is set (no --registry-config-dir, DOCKER_CONFIG or HOME)".into(),
        ));
    };
    let path = dir.file();
    let Some(cfg) = read_config(dir)? else {
        return Ok(Lookup::None(dir.say("does not exist")));
    };
    let bad = |message: String| OciError::RegistryConfig { path: path.clone(), message };
    let (keys, server) = keys_for(host);

    let helper = match cfg.get("credHelpers") {
        None | Some(Value::Null) => None,
        Some(Value::Object(h)) => match find_entry(h, &keys) {
            Some((k, Value::String(name))) => Some((name.clone(), format!("credHelpers[{k:?}]"))),
            Some((k, _)) => return Err(bad(format!("credHelpers[{k:?}] is not a string"))),
            None => None,
        },
        Some(_) => return Err(bad("credHelpers is not an object".into())),
    };
    let helper = match helper {
        Some(h) => Some(h),
        None => match cfg.get("credsStore") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some((s.clone(), "credsStore".to_string())),
            Some(_) => return Err(bad("credsStore is not a string".into())),
        },
    };
    if let Some((name, why)) = helper {
        return run_helper(&name, &server, &format!("{why} in {}", path.display()));
    }

    let auths = match cfg.get("auths") {
        None | Some(Value::Null) => None,
        Some(Value::Object(a)) => Some(a),
        Some(_) => return Err(bad("auths is not an object".into())),
    };
    let Some((key, entry)) = auths.and_then(|a| find_entry(a, &keys)) else {
        return Ok(Lookup::None(dir.say(&format!("has no credentials for {host}"))));
    };
    let Value::Object(entry) = entry else {
        return Err(bad(format!("auths[{key:?}] is not an object")));
    };
    let field = |name: &str| -> Result<String, OciError> {
        match entry.get(name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(bad(format!("auths[{key:?}].{name} is not a string"))),
        }
    };
    let mut c = Credentials {
        username: field("username")?,
        password: field("password")?,
        source: format!("auths[{key:?}] in {}", path.display()),
        ..Default::default()
    };
    let auth = field("auth")?;
    if !auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .ok_or_else(|| bad(format!("auths[{key:?}].auth is not base64 of \"user:password\"")))?;
        let (u, p) = decoded
            .split_once(':')
            .ok_or_else(|| bad(format!("auths[{key:?}].auth is not base64 of \"user:password\"")))?;
        (c.username, c.password) = (u.to_string(), p.to_string());
    }
    c.identity_token = Some(field("identitytoken")?).filter(|t| !t.is_empty());
    c.registry_token = Some(field("registrytoken")?).filter(|t| !t.is_empty());
    if !c.has_password() && c.identity_token.is_none() && c.registry_token.is_none() {
        return Ok(Lookup::None(format!(
            "auths[{key:?}] in {}",
            dir.say("holds no credentials (no auth, username/password or identitytoken)")
        )));
    }
    Ok(Lookup::Found(c))
}

/// Runs `docker-credential-<name> get` for `server`.
fn run_helper(name: &str, server: &str, why: &str) -> Result<Lookup, OciError> {
    let program = format!("docker-credential-{name}");
    let err = |message: String| OciError::CredentialHelper { helper: program.clone(), message };
    if name.is_empty() || name.contains('/') {
        return Err(err(format!("invalid helper name {name:?} ({why})")));
    }
    let mut cmd = std::process::Command::new(&program);
    cmd.arg("get");
    let out = match ignite_proc::output(&mut cmd, Some(server.as_bytes()), ignite_proc::QUICK) {
        Ok(o) => o,
        Err(e) if e.is_not_found() => {
            return Err(err(format!("not found on PATH; it is named by {why}: install it or remove that entry")))
        }
        Err(e) => return Err(err(format!("{e} (named by {why})"))),
    };
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if said.contains(HELPER_NOT_FOUND) {
            return Ok(Lookup::None(format!("{program} (named by {why}) has no credentials for {server}")));
        }
        let mut msg = said;
        if msg.is_empty() {
            msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        }
        msg.truncate(500);
        return Err(err(format!("`get` for {server} failed ({}): {msg} (named by {why})", out.status)));
    }
    // The output holds the secret: never quote it in an error.
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| err(format!("`get` for {server} printed invalid JSON ({e}) (named by {why})")))?;
    let username = v["Username"].as_str().unwrap_or("").to_string();
    let secret = v["Secret"].as_str().unwrap_or("").to_string();
    if secret.is_empty() && username.is_empty() {
        return Ok(Lookup::None(format!("{program} (named by {why}) returned empty credentials for {server}")));
    }
    let source = format!("{program} (named by {why})");
    Ok(Lookup::Found(if username == "<token>" {
        Credentials { identity_token: Some(secret), source, ..Default::default() }
    } else {
        Credentials { username, password: secret, source, ..Default::default() }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(config: &str) -> (tempfile::TempDir, ConfigDir) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), config).unwrap();
        let cd = ConfigDir { dir: d.path().to_path_buf(), origin: "test".into() };
        (d, cd)
    }

    fn found(l: Lookup) -> Credentials {
        match l {
            Lookup::Found(c) => c,
            Lookup::None(why) => panic!("no credentials: {why}"),
        }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn auths_by_host_url_and_fields() {
        let (_d, cd) = dir_with(&format!(
            r#"{{"auths":{{
                "127.0.0.1:5000":{{"auth":"{}"}},
                "http://127.5.0.1:5080":{{"auth":"{}"}},
                "https://reg.example:8443/v2/":{{"username":"carol","password":"pw:with:colons"}},
                "tok.example":{{"identitytoken":"refresh-me"}},
                "empty.example":{{}},
                "{DOCKER_HUB_KEY}":{{"auth":"{}"}}
            }}}}"#,
            b64("bob:secret"),
            b64("http_testuser:http_testpassword"),
            b64("hubuser:hubpw")
        ));
        let c = found(lookup("127.0.0.1:5000", Some(&cd)).unwrap());
        assert_eq!((c.username.as_str(), c.password.as_str()), ("bob", "secret"));
        assert!(c.source.starts_with("auths[\"127.0.0.1:5000\"] in "), "{}", c.source);
        let c = found(lookup("127.5.0.1:5080", Some(&cd)).unwrap());
        assert_eq!(c.username, "http_testuser");
        let c = found(lookup("reg.example:8443", Some(&cd)).unwrap());
        assert_eq!((c.username.as_str(), c.password.as_str()), ("carol", "pw:with:colons"));
        let c = found(lookup("tok.example", Some(&cd)).unwrap());
        assert_eq!(c.identity_token.as_deref(), Some("refresh-me"));
        assert!(!c.has_password());
        let c = found(lookup("docker.io", Some(&cd)).unwrap());
        assert_eq!(c.username, "hubuser");
        // A different port is a different registry.
        assert!(matches!(lookup("127.0.0.1:5001", Some(&cd)).unwrap(), Lookup::None(_)));
        match lookup("empty.example", Some(&cd)).unwrap() {
            Lookup::None(why) => assert!(why.contains("holds no credentials"), "{why}"),
            l => panic!("{l:?}"),
        }
        // Secrets stay out of Debug.
        let dbg = format!("{:?}", found(lookup("127.0.0.1:5000", Some(&cd)).unwrap()));
        assert!(!dbg.contains("secret"), "{dbg}");
    }

    #[test]
    fn missing_and_malformed() {
        let d = tempfile::tempdir().unwrap();
        let cd = ConfigDir { dir: d.path().to_path_buf(), origin: "--registry-config-dir".into() };
        match lookup("h:1", Some(&cd)).unwrap() {
            Lookup::None(why) => {
                assert!(why.contains("config.json does not exist") && why.contains("--registry-config-dir"), "{why}")
            }
            l => panic!("{l:?}"),
        }
        let (_d, cd) = dir_with("{\"auths\": {");
        let e = lookup("h:1", Some(&cd)).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("invalid JSON"), "{e}");
        let (_d, cd) = dir_with(r#"{"auths":{"h:1":{"auth":"%%%"}}}"#);
        let e = lookup("h:1", Some(&cd)).unwrap_err().to_string();
        assert!(e.contains("auths[\"h:1\"].auth") && !e.contains("%%%"), "{e}");
        let (_d, cd) = dir_with("  \n");
        assert!(matches!(lookup("h:1", Some(&cd)).unwrap(), Lookup::None(_)));
    }

    #[test]
    fn helpers_take_precedence_and_fail_loudly() {
        let (_d, cd) = dir_with(&format!(
            r#"{{"auths":{{"h:1":{{"auth":"{}"}}}},"credHelpers":{{"h:1":"ignite-test-missing-helper"}}}}"#,
            b64("u:p")
        ));
        let e = lookup("h:1", Some(&cd)).unwrap_err().to_string();
        assert!(e.contains("docker-credential-ignite-test-missing-helper") && e.contains("not found on PATH"), "{e}");
        let (_d, cd) = dir_with(r#"{"credsStore":"ignite-test-missing-store"}"#);
        let e = lookup("any:1", Some(&cd)).unwrap_err().to_string();
        assert!(e.contains("docker-credential-ignite-test-missing-store") && e.contains("credsStore"), "{e}");
        let (_d, cd) = dir_with(r#"{"credHelpers":{"h:1":"../x"}}"#);
        assert!(lookup("h:1", Some(&cd)).unwrap_err().to_string().contains("invalid helper name"));
    }

    #[test]
    fn key_hosts() {
        assert_eq!(key_host("http://127.0.0.1:5000/v2/"), "127.0.0.1:5000");
        assert_eq!(key_host("https://index.docker.io/v1/"), "index.docker.io");
        assert_eq!(key_host("reg:5000"), "reg:5000");
    }
}
