//! Pulls from registries that require credentials: Weave Ignite's `TestPullFromAuthRegistry`
//! (e2e/registry_auth_test.go) ported onto ignite with real registries and no Docker engine.
//!
//! Two of Debian's `docker-registry` with htpasswd auth, one over plain HTTP and one over HTTPS
//! with a certificate signed by a CA generated here, both on loopback ports, hold the busybox
//! test image (pushed with skopeo and credentials). Every `ignite image import` runs with its
//! own state root, an empty HOME and only the environment the case sets, so the host's
//! `~/.docker` and `/etc/docker/certs.d` play no part.
//!
//! Ignite's cases (each over HTTP and HTTPS): no auth info fails; `--registry-config-dir`
//! works; `spec.registryConfigDir` in `--ignite-config` works; the flag overrides the
//! configuration (flag → a directory without config.json fails); a directory without
//! config.json fails. Then Docker's other credential forms, errors, and TLS trust.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const HTTP_USER: &str = "http_testuser";
const HTTP_PASSWORD: &str = "http_testpassword";
const HTTPS_USER: &str = "https_testuser";
const HTTPS_PASSWORD: &str = "https_testpassword";
const IMAGE: &str = "weaveworks/ignite-ubuntu:test";

/// The path of `tool`, or a panic naming the package that has it.
fn need(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")]) {
        let p = d.join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!("{tool} is not installed: apt-get install {package} (scripts/setup-host.sh does)");
}

fn run(cmd: &mut Command) -> Output {
    let o = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Standard base64 with padding (config.json's `auth`).
fn b64(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in s.as_bytes().chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            out.push(if i <= c.len() { A[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

/// A CA and a certificate it signed for 127.0.0.1 (openssl).
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let openssl = need("openssl", "openssl");
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        run(Command::new(&openssl).current_dir(&dir).args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=ignite test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]));
        run(Command::new(&openssl).current_dir(&dir).args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "domain.key",
            "-out",
            "domain.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]));
        std::fs::write(
            dir.join("ext.cnf"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
        )
        .unwrap();
        run(Command::new(&openssl).current_dir(&dir).args([
            "x509",
            "-req",
            "-in",
            "domain.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "domain.crt",
            "-extfile",
            "ext.cnf",
        ]));
        Pki { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A certs.d root trusting this CA for `addr`.
    fn certs_d(&self, parent: &Path, addr: &str) -> PathBuf {
        let root = parent.join(format!("certs.d-{}", self.dir.file_name().unwrap().to_string_lossy()));
        std::fs::create_dir_all(root.join(addr)).unwrap();
        std::fs::copy(self.ca(), root.join(addr).join("ca.crt")).unwrap();
        root
    }

    /// A certs.d root for `addr` with this CA and a client certificate it signed.
    fn certs_d_with_client(&self, parent: &Path, addr: &str) -> PathBuf {
        let openssl = need("openssl", "openssl");
        let root = parent.join(format!("certs.d-client-{}", self.dir.file_name().unwrap().to_string_lossy()));
        let d = root.join(addr);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(self.ca(), d.join("ca.crt")).unwrap();
        run(Command::new(&openssl).current_dir(&d).args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            "/CN=ignite test client",
        ]));
        std::fs::write(d.join("client.cnf"), "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n").unwrap();
        run(Command::new(&openssl)
            .current_dir(&d)
            .args(["x509", "-req", "-in", "client.csr", "-CA"])
            .arg(self.ca())
            .args(["-CAkey"])
            .arg(self.dir.join("ca.key"))
            .args(["-CAcreateserial", "-days", "2", "-out", "client.cert", "-extfile", "client.cnf"]));
        for f in ["client.csr", "client.cnf"] {
            std::fs::remove_file(d.join(f)).unwrap();
        }
        root
    }
}

/// A real registry with htpasswd auth (and TLS when given a certificate), stopped on drop.
struct AuthRegistry {
    addr: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl AuthRegistry {
    fn start(user: &str, password: &str, tls: Option<&Pki>) -> AuthRegistry {
        AuthRegistry::start_with(user, password, tls, false)
    }

    /// `client_certs`: the registry also requires a client certificate signed by the CA.
    fn start_with(user: &str, password: &str, tls: Option<&Pki>, client_certs: bool) -> AuthRegistry {
        let bin = need("docker-registry", "docker-registry");
        let htpasswd = need("htpasswd", "apache2-utils");
        let dir = tempfile::tempdir().unwrap();
        let o = run(Command::new(htpasswd).args(["-Bbn", user, password]));
        std::fs::write(dir.path().join("htpasswd"), o.stdout).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let tls = tls
            .map(|p| {
                let mut t = format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    p.dir.join("domain.crt").display(),
                    p.dir.join("domain.key").display()
                );
                if client_certs {
                    t += &format!("    clientcas:\n      - {}\n", p.ca().display());
                }
                t
            })
            .unwrap_or_default();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 auth:\n  htpasswd:\n    realm: Registry Realm\n    path: {}\nhttp:\n  addr: {addr}\n{tls}",
                dir.path().join("data").display(),
                dir.path().join("htpasswd").display()
            ),
        )
        .unwrap();
        let child =
            Command::new(bin).arg("serve").arg(&cfg).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        common::until_listening(&addr, 10);
        AuthRegistry { addr, child, _dir: dir }
    }

    /// Pushes the busybox layout as `name` with credentials; TLS with the certificates of
    /// `cert_dir` (a certs.d/<host:port> directory).
    fn push(&self, name: &str, creds: &str, cert_dir: Option<&Path>) {
        let layout = &common::images().busybox_oci;
        let mut cmd = Command::new(need("skopeo", "skopeo"));
        cmd.args(["copy", "--quiet", "--dest-creds", creds]);
        match cert_dir {
            Some(d) => cmd.arg("--dest-cert-dir").arg(d),
            None => cmd.arg("--dest-tls-verify=false"),
        };
        cmd.arg(format!("oci:{}:latest", layout.display())).arg(format!("docker://{}/{name}", self.addr));
        run(&mut cmd);
    }

    fn image(&self) -> String {
        format!("{}/{IMAGE}", self.addr)
    }
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `ignite` run: its own state root and HOME, and only the environment given.
struct Ignite<'a> {
    dir: &'a Path,
    env: Vec<(String, String)>,
}

impl Ignite<'_> {
    fn new(dir: &Path) -> Ignite<'_> {
        Ignite { dir, env: Vec::new() }
    }

    fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Self {
        self.env.push((k.into(), v.as_ref().to_string_lossy().into_owned()));
        self
    }

    fn import(&self, args: &[&str]) -> Output {
        let t = tempfile::tempdir_in(self.dir).unwrap();
        let home = t.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let mut cmd = Command::new(common::bin());
        cmd.arg("image").arg("import").args(args);
        for k in [
            "DOCKER_CONFIG",
            "IGNITE_CONFIG",
            "IGNITE_CONTAINERD_INSECURE_REGISTRIES",
            "IGNITE_REGISTRY_CERTS_DIR",
            "SSL_CERT_FILE",
        ] {
            cmd.env_remove(k);
        }
        cmd.env("IGNITE_ROOT", t.path().join("root")).env("HOME", &home).env("IGNITE_REGISTRY_TIMEOUT", "20");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).output().expect("run ignite")
    }

    fn works(&self, case: &str, args: &[&str]) {
        let o = self.import(args);
        assert!(
            o.status.success(),
            "{case}: ignite image import {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Fails with exit code 1 and every needle in its message; returns the message.
    fn fails(&self, case: &str, args: &[&str], needles: &[&str]) -> String {
        let o = self.import(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{case}: ignite image import {args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{case}: expected {n:?} in {err:?}");
        }
        err
    }
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), body).unwrap();
    dir.to_path_buf()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Ignite's cases against one registry; `ignite` carries the transport settings.
fn ignite_cases(d: &Path, ignite: &Ignite, reg: &AuthRegistry, scheme: &str, user: &str, password: &str) {
    let image = reg.image();
    // Ignite's registry config: keys with the scheme, as `docker login http://…` writes them.
    let rc_dir = write_config(
        &d.join(format!("{scheme}-rc")),
        &format!(r#"{{"auths":{{"{scheme}://{}":{{"auth":"{}"}}}}}}"#, reg.addr, b64(&format!("{user}:{password}"))),
    );
    let empty_dir = d.join(format!("{scheme}-empty"));
    std::fs::create_dir_all(&empty_dir).unwrap();
    let ignite_config = d.join(format!("{scheme}-ignite-config.yaml"));
    std::fs::write(
        &ignite_config,
        format!(
            "---\napiVersion: ignite.weave.works/v1alpha4\nkind: Configuration\nmetadata:\n  name: test-config\n\
             spec:\n  registryConfigDir: {}\n",
            rc_dir.display()
        ),
    )
    .unwrap();

    // no auth info: the registry and where credentials were looked for are named.
    ignite.fails(
        "no auth info",
        &[&image, "--runtime", "containerd"],
        &["authentication failed (401)", &reg.addr, "requires credentials", ".docker/config.json", "~/.docker"],
    );
    // registry config flag
    ignite.works("registry config flag", &[&image, "--runtime", "containerd", "--registry-config-dir", s(&rc_dir)]);
    // registry config in ignite config
    ignite.works("registry config in ignite config", &[&image, "--ignite-config", s(&ignite_config)]);
    // flag override registry config: the flag's directory wins, and has no config.json.
    let err = ignite.fails(
        "flag override registry config",
        &[&image, "--registry-config-dir", s(&empty_dir), "--ignite-config", s(&ignite_config)],
        &["authentication failed (401)", "config.json does not exist", "--registry-config-dir"],
    );
    assert!(err.contains(s(&empty_dir)), "{err}");
    // invalid registry config: a directory without config.json.
    ignite.fails(
        "invalid registry config",
        &[&image, "--registry-config-dir", s(&empty_dir)],
        &["authentication failed (401)", s(&empty_dir)],
    );
    // The configuration's directory is named when it is the one used.
    let cfg = d.join(format!("{scheme}-ignite-config-empty.yaml"));
    std::fs::write(
        &cfg,
        format!(
            "apiVersion: ignite.weave.works/v1alpha4\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  \
             registryConfigDir: {}\n",
            empty_dir.display()
        ),
    )
    .unwrap();
    ignite.fails(
        "configuration's directory without config.json",
        &[&image, "--ignite-config", s(&cfg)],
        &["requires credentials", s(&empty_dir), &format!("spec.registryConfigDir of {}", cfg.display())],
    );
    let wrong = write_config(
        &d.join(format!("{scheme}-wrong")),
        &format!(r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#, reg.addr, b64(&format!("{user}:not-{password}"))),
    );
    let cfg = d.join(format!("{scheme}-ignite-config-wrong.yaml"));
    std::fs::write(
        &cfg,
        format!(
            "apiVersion: ignite.weave.works/v1alpha4\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  \
             registryConfigDir: {}\n",
            wrong.display()
        ),
    )
    .unwrap();
    let err = ignite.fails(
        "wrong password in the configuration's directory",
        &[&image, "--ignite-config", s(&cfg)],
        &["authentication failed (401)", "refused the credentials of user", user],
    );
    assert!(!err.contains(password), "the password leaked: {err}");
    // DOCKER_CONFIG is used when neither flag nor configuration names a directory.
    Ignite { dir: ignite.dir, env: ignite.env.clone() }.env("DOCKER_CONFIG", &rc_dir).works("DOCKER_CONFIG", &[&image]);
}

#[test]
fn pull_from_auth_registry_http() {
    // Ignite's registryConfigContent holds these two.
    assert_eq!(b64("http_testuser:http_testpassword"), "aHR0cF90ZXN0dXNlcjpodHRwX3Rlc3RwYXNzd29yZA==");
    assert_eq!(b64("https_testuser:https_testpassword"), "aHR0cHNfdGVzdHVzZXI6aHR0cHNfdGVzdHBhc3N3b3Jk");
    let d = tempfile::tempdir().unwrap();
    let reg = AuthRegistry::start(HTTP_USER, HTTP_PASSWORD, None);
    reg.push(IMAGE, &format!("{HTTP_USER}:{HTTP_PASSWORD}"), None);
    // A loopback registry speaking plain HTTP is found without any setting.
    ignite_cases(d.path(), &Ignite::new(d.path()), &reg, "http", HTTP_USER, HTTP_PASSWORD);
    // As in Ignite's test: listed as an http:// insecure registry.
    let listed = Ignite::new(d.path()).env("IGNITE_CONTAINERD_INSECURE_REGISTRIES", format!("http://{}", reg.addr));
    ignite_cases(&d.path().join("listed"), &listed, &reg, "http", HTTP_USER, HTTP_PASSWORD);
}

#[test]
fn pull_from_auth_registry_https() {
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::new(d.path(), "pki");
    let reg = AuthRegistry::start(HTTPS_USER, HTTPS_PASSWORD, Some(&pki));
    // Trusted through certs.d/<host:port>/ca.crt.
    let certs_d = pki.certs_d(d.path(), &reg.addr);
    reg.push(IMAGE, &format!("{HTTPS_USER}:{HTTPS_PASSWORD}"), Some(&certs_d.join(&reg.addr)));
    let trusted = Ignite::new(d.path()).env("IGNITE_REGISTRY_CERTS_DIR", &certs_d);
    ignite_cases(&d.path().join("certs.d"), &trusted, &reg, "https", HTTPS_USER, HTTPS_PASSWORD);
    // As in Ignite's test: an https:// insecure registry, certificate not verified.
    let insecure = Ignite::new(d.path())
        .env("IGNITE_CONTAINERD_INSECURE_REGISTRIES", format!("http://127.0.0.1:1,https://{}", reg.addr));
    ignite_cases(&d.path().join("insecure"), &insecure, &reg, "https", HTTPS_USER, HTTPS_PASSWORD);
}

#[test]
fn https_trust() {
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::new(d.path(), "pki");
    let other = Pki::new(d.path(), "other");
    let reg = AuthRegistry::start(HTTPS_USER, HTTPS_PASSWORD, Some(&pki));
    reg.push(IMAGE, &format!("{HTTPS_USER}:{HTTPS_PASSWORD}"), Some(&pki.certs_d(d.path(), &reg.addr).join(&reg.addr)));
    let rc = write_config(
        &d.path().join("rc"),
        &format!(r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#, reg.addr, b64(&format!("{HTTPS_USER}:{HTTPS_PASSWORD}"))),
    );
    let args = [reg.image(), "--registry-config-dir".into(), s(&rc).into()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let empty_certs = d.path().join("no-certs");
    std::fs::create_dir_all(&empty_certs).unwrap();
    // Not trusted: a clear error saying what to do, no fallback to plain HTTP.
    Ignite::new(d.path()).env("IGNITE_REGISTRY_CERTS_DIR", &empty_certs).fails(
        "untrusted CA",
        &args,
        &["certificate not trusted", &reg.addr, &format!("{}/{}/ca.crt", empty_certs.display(), reg.addr)],
    );
    // Another CA in certs.d does not help.
    Ignite::new(d.path()).env("IGNITE_REGISTRY_CERTS_DIR", other.certs_d(d.path(), &reg.addr)).fails(
        "other CA",
        &args,
        &["certificate not trusted"],
    );
    // The right CA in certs.d, in SSL_CERT_FILE, or the registry listed as insecure (bare or
    // https://) in the environment or with --insecure-registry.
    Ignite::new(d.path()).env("IGNITE_REGISTRY_CERTS_DIR", pki.certs_d(d.path(), &reg.addr)).works("certs.d", &args);
    Ignite::new(d.path())
        .env("IGNITE_REGISTRY_CERTS_DIR", &empty_certs)
        .env("SSL_CERT_FILE", pki.ca())
        .works("SSL_CERT_FILE", &args);
    for list in [format!("https://{}", reg.addr), reg.addr.clone()] {
        Ignite::new(d.path())
            .env("IGNITE_REGISTRY_CERTS_DIR", &empty_certs)
            .env("IGNITE_CONTAINERD_INSECURE_REGISTRIES", &list)
            .works(&format!("insecure {list}"), &args);
    }
    let mut flagged = args.clone();
    flagged.extend(["--insecure-registry", &reg.addr]);
    Ignite::new(d.path()).env("IGNITE_REGISTRY_CERTS_DIR", &empty_certs).works("--insecure-registry", &flagged);
    // Listed as plain HTTP: it speaks TLS, so that fails and says so.
    Ignite::new(d.path())
        .env("IGNITE_REGISTRY_CERTS_DIR", pki.certs_d(d.path(), &reg.addr))
        .env("IGNITE_CONTAINERD_INSECURE_REGISTRIES", format!("http://{}", reg.addr))
        .fails("https registry listed as http", &args, &[&reg.addr, "speaks HTTPS"]);
}

#[test]
fn https_client_certificate() {
    let d = tempfile::tempdir().unwrap();
    let pki = Pki::new(d.path(), "pki");
    let reg = AuthRegistry::start_with(HTTPS_USER, HTTPS_PASSWORD, Some(&pki), true);
    let with_client = pki.certs_d_with_client(d.path(), &reg.addr);
    reg.push(IMAGE, &format!("{HTTPS_USER}:{HTTPS_PASSWORD}"), Some(&with_client.join(&reg.addr)));
    let rc = write_config(
        &d.path().join("rc"),
        &format!(r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#, reg.addr, b64(&format!("{HTTPS_USER}:{HTTPS_PASSWORD}"))),
    );
    let args = [reg.image(), "--registry-config-dir".into(), s(&rc).into()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // certs.d/<host:port>/client.cert + client.key are presented, as Docker does.
    Ignite::new(d.path()).env("IGNITE_REGISTRY_CERTS_DIR", &with_client).works("client certificate", &args);
    // Without them the registry refuses the handshake, and the message says what to add.
    Ignite::new(d.path()).env("IGNITE_REGISTRY_CERTS_DIR", pki.certs_d(d.path(), &reg.addr)).fails(
        "no client certificate",
        &args,
        &[&reg.addr, "client certificate", "client.cert"],
    );
    // A certificate without its key is a clear error.
    std::fs::remove_file(with_client.join(&reg.addr).join("client.key")).unwrap();
    Ignite::new(d.path()).env("IGNITE_REGISTRY_CERTS_DIR", &with_client).fails(
        "client certificate without key",
        &args,
        &["client.cert", "missing key"],
    );
}

/// A `docker-credential-test` that knows one server; it records what it was asked for.
fn credential_helper(dir: &Path, addr: &str, user: &str, password: &str) -> PathBuf {
    let bin = dir.join("helper-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("docker-credential-test");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nserver=$(cat)\necho \"$server\" >> {asked}\n\
             if [ \"$server\" = \"{addr}\" ]; then\n  \
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}' \"$server\"\n\
             else\n  echo 'credentials not found in native keychain'\n  exit 1\nfi\n",
            asked = bin.join("asked").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn docker_credential_forms() {
    let d = tempfile::tempdir().unwrap();
    let reg = AuthRegistry::start(HTTP_USER, HTTP_PASSWORD, None);
    reg.push(IMAGE, &format!("{HTTP_USER}:{HTTP_PASSWORD}"), None);
    let image = reg.image();
    let ignite = Ignite::new(d.path());
    let with = |name: &str, body: String| write_config(&d.path().join(name), &body);
    let flag = |dir: &Path| vec![image.clone(), "--registry-config-dir".to_string(), s(dir).to_string()];
    let good = b64(&format!("{HTTP_USER}:{HTTP_PASSWORD}"));
    let bad = b64(&format!("{HTTP_USER}:wrong"));
    let a = &reg.addr;

    // username/password fields instead of auth.
    let dir =
        with("fields", format!(r#"{{"auths":{{"{a}":{{"username":"{HTTP_USER}","password":"{HTTP_PASSWORD}"}}}}}}"#));
    ignite.works("username/password", &flag(&dir).iter().map(String::as_str).collect::<Vec<_>>());
    // A URL-form key, as older `docker login` wrote them.
    let dir = with("url", format!(r#"{{"auths":{{"http://{a}/v2/":{{"auth":"{good}"}}}}}}"#));
    ignite.works("URL key", &flag(&dir).iter().map(String::as_str).collect::<Vec<_>>());
    // Wrong password: said so, the password is not shown.
    let dir = with("wrong", format!(r#"{{"auths":{{"{a}":{{"auth":"{bad}"}}}}}}"#));
    let err = ignite.fails(
        "wrong password",
        &flag(&dir).iter().map(String::as_str).collect::<Vec<_>>(),
        &["authentication failed (401)", a, "refused the credentials of user \"http_testuser\"", "config.json"],
    );
    assert!(!err.contains(&bad) && !err.contains(HTTP_PASSWORD), "{err}");
    // Credentials for another registry only.
    let dir = with("other", format!(r#"{{"auths":{{"127.0.0.1:1":{{"auth":"{good}"}}}}}}"#));
    ignite.fails(
        "other registry's credentials",
        &flag(&dir).iter().map(String::as_str).collect::<Vec<_>>(),
        &["requires credentials", &format!("has no credentials for {a}")],
    );
    // Malformed config.json: exit 1, the file and the JSON error named.
    let dir = with("malformed", format!(r#"{{"auths":{{"{a}":{{"auth":"{good}"}}"#));
    let err = ignite.fails(
        "malformed config.json",
        &flag(&dir).iter().map(String::as_str).collect::<Vec<_>>(),
        &[&format!("{}/config.json", dir.display()), "invalid JSON", "EOF"],
    );
    assert!(!err.contains(&good), "{err}");

    // credHelpers: the helper on PATH is asked for host:port and takes precedence over auths.
    let helper_bin = credential_helper(d.path(), a, HTTP_USER, HTTP_PASSWORD);
    let path = format!("{}:{}", helper_bin.display(), std::env::var("PATH").unwrap_or_default());
    let helped = Ignite::new(d.path()).env("PATH", &path);
    let dir = with("helpers", format!(r#"{{"auths":{{"{a}":{{"auth":"{bad}"}}}},"credHelpers":{{"{a}":"test"}}}}"#));
    helped.works("credHelpers", &flag(&dir).iter().map(String::as_str).collect::<Vec<_>>());
    let asked = std::fs::read_to_string(helper_bin.join("asked")).unwrap();
    assert_eq!(asked.lines().collect::<Vec<_>>(), vec![a.as_str()], "the helper was asked for {asked:?}");
    // credsStore: the default helper.
    let dir = with("store", r#"{"credsStore":"test"}"#.to_string());
    helped.works("credsStore", &flag(&dir).iter().map(String::as_str).collect::<Vec<_>>());
    // A helper without credentials for the registry: anonymous, so refused, and said so.
    let empty = helper_bin.join("docker-credential-empty");
    std::fs::write(&empty, "#!/bin/sh\ncat >/dev/null\necho 'credentials not found in native keychain'\nexit 1\n")
        .unwrap();
    std::fs::set_permissions(&empty, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir =
        with("helper-empty", format!(r#"{{"auths":{{"{a}":{{"auth":"{good}"}}}},"credHelpers":{{"{a}":"empty"}}}}"#));
    helped.fails(
        "helper without credentials",
        &flag(&dir).iter().map(String::as_str).collect::<Vec<_>>(),
        &["authentication failed (401)", "docker-credential-empty", &format!("has no credentials for {a}")],
    );
    // A helper that is not installed is an error naming it, not an anonymous pull.
    let dir = with(
        "missing-helper",
        format!(r#"{{"auths":{{"{a}":{{"auth":"{good}"}}}},"credHelpers":{{"{a}":"ignite-absent"}}}}"#),
    );
    helped.fails(
        "missing helper",
        &flag(&dir).iter().map(String::as_str).collect::<Vec<_>>(),
        &["docker-credential-ignite-absent", "not found on PATH", "credHelpers"],
    );
    // A failing helper is an error naming it.
    let failing = helper_bin.join("docker-credential-broken");
    std::fs::write(&failing, "#!/bin/sh\necho 'keychain locked' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&failing, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir = with("broken-helper", format!(r#"{{"credHelpers":{{"{a}":"broken"}}}}"#));
    helped.fails(
        "failing helper",
        &flag(&dir).iter().map(String::as_str).collect::<Vec<_>>(),
        &["docker-credential-broken", "keychain locked"],
    );
}
