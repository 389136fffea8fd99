//! A CNI 1.0 runtime: loads a network configuration list and runs its plugins in order for
//! ADD (each receiving the previous result), in reverse for DEL, and CHECK.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::NetError;

/// Name of the default network, as Weave Ignite's.
pub const DEFAULT_NETWORK: &str = "ignite-cni-bridge";
/// File the default conflist is written to when the configuration directory has none.
pub const DEFAULT_CONFLIST: &str = "10-ignite.conflist";

/// Where plugins and configurations live.
#[derive(Debug, Clone)]
pub struct CniConfig {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
}

impl Default for CniConfig {
    fn default() -> Self {
        let conf_dir =
            std::env::var_os("IGNITE_CNI_CONF_DIR").map(PathBuf::from).unwrap_or_else(|| "/etc/cni/net.d".into());
        let bin_dirs = match std::env::var_os("IGNITE_CNI_BIN_DIR") {
            Some(v) => std::env::split_paths(&v).collect(),
            None => vec!["/opt/cni/bin".into(), "/usr/lib/cni".into(), "/usr/libexec/cni".into()],
        };
        CniConfig { conf_dir, bin_dirs }
    }
}

/// A port to publish (the `portMappings` capability).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "String::is_empty", rename = "hostIP")]
    pub host_ip: String,
}

/// A loaded network configuration list.
#[derive(Debug, Clone)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
    pub path: PathBuf,
}

/// The default list: bridge `ignite0` on 10.61.0.0/16 with host-local IPAM and masquerading,
/// portmap and firewall — Weave Ignite's network.
pub fn default_conflist() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": DEFAULT_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "ignite0",
                "isGateway": true,
                "isDefaultGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "subnet": "10.61.0.0/16"
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
            { "type": "firewall" }
        ]
    })
}

impl CniConfig {
    /// Loads the network named `name` (first `*.conflist` in the directory when `None`),
    /// writing the default conflist if the directory holds none.
    pub fn load(&self, name: Option<&str>) -> Result<NetworkList, NetError> {
        let entries: Vec<PathBuf> =
            std::fs::read_dir(&self.conf_dir).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        let default_tmp = format!(".{DEFAULT_CONFLIST}.tmp-");
        if entries.iter().any(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&default_tmp))) {
            ignite_proc::temp::sweep(&self.conf_dir.join(DEFAULT_CONFLIST));
        }
        let mut files: Vec<PathBuf> =
            entries.into_iter().filter(|p| p.extension().is_some_and(|x| x == "conflist")).collect();
        if files.is_empty() {
            files.push(install_default(&self.conf_dir)?);
        }
        files.sort();
        for f in files {
            let list = parse_list(&f)?;
            if name.is_none() || name == Some(list.name.as_str()) {
                return Ok(list);
            }
        }
        Err(NetError::Config {
            path: self.conf_dir.clone(),
            message: format!("no network named {:?}", name.unwrap_or("")),
        })
    }

    fn plugin_path(&self, ty: &str) -> Result<PathBuf, NetError> {
        if ty.contains('/') || ty.is_empty() {
            return Err(NetError::Config {
                path: self.conf_dir.clone(),
                message: format!("invalid plugin type {ty:?}"),
            });
        }
        self.bin_dirs.iter().map(|d| d.join(ty)).find(|p| p.is_file()).ok_or_else(|| NetError::PluginMissing {
            plugin: ty.to_string(),
            dirs: self.bin_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":"),
        })
    }
}

/// Puts the default conflist into `dir` unless a file of its name is there. Parallel first
/// runs on a fresh host all get here: each writes a temporary of its own and links it into
/// place, which never replaces a file, so one wins and the others find its complete file
/// there. (One shared temporary renamed into place made the losers fail with "No such file
/// or directory": their temporary had been renamed away by the winner.) A temporary left by a
/// writer killed before it removed its own is swept here or by the next [`CniConfig::load`].
fn install_default(dir: &Path) -> Result<PathBuf, NetError> {
    std::fs::create_dir_all(dir).map_err(|source| NetError::Io { path: dir.into(), source })?;
    let path = dir.join(DEFAULT_CONFLIST);
    ignite_proc::temp::sweep(&path);
    let tmp = ignite_proc::temp::path_for(&path);
    let res = (|| {
        let mut f = File::create_new(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&default_conflist()).unwrap_or_default())?;
        f.sync_all()?;
        match std::fs::hard_link(&tmp, &path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    res.map_err(|source| NetError::Io { path: path.clone(), source })?;
    Ok(path)
}

fn parse_list(path: &Path) -> Result<NetworkList, NetError> {
    let bad = |m: String| NetError::Config { path: path.into(), message: m };
    let bytes = std::fs::read(path).map_err(|source| NetError::Io { path: path.into(), source })?;
    if bytes.len() > 1 << 20 {
        return Err(bad("larger than 1 MiB".into()));
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let name = v["name"].as_str().ok_or_else(|| bad("no \"name\"".into()))?.to_string();
    let cni_version = v["cniVersion"].as_str().unwrap_or("1.0.0").to_string();
    let plugins = v["plugins"].as_array().cloned().ok_or_else(|| bad("no \"plugins\" list".into()))?;
    if plugins.is_empty() {
        return Err(bad("empty \"plugins\" list".into()));
    }
    for p in &plugins {
        if p["type"].as_str().is_none() {
            return Err(bad("a plugin has no \"type\"".into()));
        }
    }
    Ok(NetworkList { name, cni_version, plugins, path: path.into() })
}

/// Arguments of one CNI invocation.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
    pub ports: &'a [PortMapping],
}

impl NetworkList {
    fn plugin_conf(&self, plugin: &Value, prev: Option<&Value>, inv: &Invocation<'_>) -> Value {
        let mut conf = plugin.clone();
        conf["cniVersion"] = json!(self.cni_version);
        conf["name"] = json!(self.name);
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        if plugin["capabilities"]["portMappings"].as_bool() == Some(true) {
            conf["runtimeConfig"] = json!({ "portMappings": inv.ports });
        }
        if let Some(o) = conf.as_object_mut() {
            o.remove("capabilities");
        }
        conf
    }

    /// Plugins that have work for this invocation: a plugin that only serves the
    /// `portMappings` capability (portmap) is skipped for a VM that publishes no port; that
    /// saves one plugin run (~10 ms) on every start of most VMs.
    fn active<'a>(&'a self, inv: &'a Invocation<'_>) -> impl DoubleEndedIterator<Item = &'a Value> + 'a {
        self.plugins.iter().filter(move |p| {
            !(inv.ports.is_empty()
                && p["type"] == "portmap"
                && p["capabilities"]["portMappings"].as_bool() == Some(true))
        })
    }

    /// ADD through every plugin; returns the final result.
    pub fn add(&self, cfg: &CniConfig, inv: &Invocation<'_>) -> Result<Value, NetError> {
        let mut prev: Option<Value> = None;
        for plugin in self.active(inv) {
            let conf = self.plugin_conf(plugin, prev.as_ref(), inv);
            let t = std::time::Instant::now();
            let out = exec(cfg, "ADD", &conf, inv)?;
            tracing::debug!("CNI ADD {}: {:.1} ms", conf["type"], t.elapsed().as_secs_f64() * 1000.0);
            ignite_proc::fault::point(&format!("cni.added-{}", conf["type"].as_str().unwrap_or("plugin")));
            prev = Some(out);
        }
        prev.ok_or(NetError::NoAddress)
    }

    /// DEL through every plugin in reverse, with the ADD result; keeps going past failures
    /// and reports the first.
    pub fn del(&self, cfg: &CniConfig, inv: &Invocation<'_>, result: Option<&Value>) -> Result<(), NetError> {
        let mut first = None;
        for plugin in self.active(inv).rev() {
            let conf = self.plugin_conf(plugin, result, inv);
            if let Err(e) = exec(cfg, "DEL", &conf, inv) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// CHECK through every plugin.
    pub fn check(&self, cfg: &CniConfig, inv: &Invocation<'_>, result: &Value) -> Result<(), NetError> {
        for plugin in self.active(inv) {
            let conf = self.plugin_conf(plugin, Some(result), inv);
            exec(cfg, "CHECK", &conf, inv)?;
        }
        Ok(())
    }
}

/// Runs one plugin.
pub fn exec(cfg: &CniConfig, command: &str, conf: &Value, inv: &Invocation<'_>) -> Result<Value, NetError> {
    let ty = conf["type"].as_str().unwrap_or_default().to_string();
    let bin = cfg.plugin_path(&ty)?;
    let path = cfg.bin_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":");
    let mut cmd = Command::new(&bin);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.args)
        .env("CNI_PATH", path);
    let out = ignite_proc::output(&mut cmd, Some(conf.to_string().as_bytes()), ignite_proc::PLUGIN).map_err(|e| {
        NetError::Plugin { plugin: ty.clone(), command: command.into(), message: crate::error_chain(&e) }
    })?;
    let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() {
        let msg = match (stdout["msg"].as_str(), stdout["details"].as_str()) {
            (Some(m), Some(d)) if !d.is_empty() => format!("{m}: {d}"),
            (Some(m), _) => m.to_string(),
            _ => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        };
        return Err(NetError::Plugin { plugin: ty, command: command.into(), message: msg });
    }
    Ok(stdout)
}

/// Versions a plugin supports (VERSION command).
pub fn version(cfg: &CniConfig, plugin: &str) -> Result<Value, NetError> {
    let conf = json!({"cniVersion": "1.0.0", "name": "version-probe", "type": plugin});
    exec(cfg, "VERSION", &conf, &Invocation { container_id: "", netns: "", ifname: "", args: "", ports: &[] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_the_default_list() {
        let d = tempfile::tempdir().unwrap();
        let cfg = CniConfig { conf_dir: d.path().join("net.d"), bin_dirs: vec![] };
        let l = cfg.load(None).unwrap();
        assert_eq!(l.name, DEFAULT_NETWORK);
        assert_eq!(l.plugins.len(), 3);
        assert!(d.path().join("net.d").join(DEFAULT_CONFLIST).is_file());
        std::fs::write(d.path().join("net.d/00-broken.conflist"), b"{ not json").unwrap();
        assert!(matches!(cfg.load(None), Err(NetError::Config { .. })));
    }

    #[test]
    fn parallel_first_loads_all_get_the_one_default_list() {
        // Rounds of eight first loads let loose at once on a fresh directory each.
        for _ in 0..50 {
            let d = tempfile::tempdir().unwrap();
            let cfg = CniConfig { conf_dir: d.path().join("net.d"), bin_dirs: vec![] };
            let start = std::sync::Arc::new(std::sync::Barrier::new(8));
            let loads: Vec<_> = (0..8)
                .map(|_| {
                    let (cfg, start) = (cfg.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        cfg.load(None).map(|l| l.name)
                    })
                })
                .collect();
            for l in loads {
                assert_eq!(l.join().unwrap().unwrap(), DEFAULT_NETWORK);
            }
            let left: Vec<_> = std::fs::read_dir(&cfg.conf_dir).unwrap().flatten().map(|e| e.file_name()).collect();
            assert_eq!(left, [DEFAULT_CONFLIST], "one list, no temporaries");
            let v: Value =
                serde_json::from_slice(&std::fs::read(cfg.conf_dir.join(DEFAULT_CONFLIST)).unwrap()).unwrap();
            assert_eq!(v, default_conflist());
        }
    }

    #[test]
    fn a_killed_writers_temporary_is_swept_and_never_loaded() {
        let d = tempfile::tempdir().unwrap();
        let cfg = CniConfig { conf_dir: d.path().into(), bin_dirs: vec![] };
        // Written by a process that no longer runs (pid_max is at most 2^22), after another
        // writer's list was in place.
        let left = d.path().join(format!(".{DEFAULT_CONFLIST}.tmp-4194305-0"));
        std::fs::write(&left, b"{ half").unwrap();
        std::fs::write(d.path().join(DEFAULT_CONFLIST), serde_json::to_vec(&default_conflist()).unwrap()).unwrap();
        assert_eq!(cfg.load(None).unwrap().name, DEFAULT_NETWORK);
        assert!(!left.exists());
    }

    #[test]
    fn missing_plugin_names_the_package() {
        let d = tempfile::tempdir().unwrap();
        let cfg = CniConfig { conf_dir: d.path().into(), bin_dirs: vec![d.path().join("bin")] };
        let e = version(&cfg, "bridge").unwrap_err().to_string();
        assert!(e.contains("containernetworking-plugins"), "{e}");
    }

    #[test]
    fn port_mappings_reach_plugins_with_the_capability() {
        let l = NetworkList { name: "n".into(), cni_version: "1.0.0".into(), plugins: vec![], path: "/x".into() };
        let ports =
            [PortMapping { host_port: 8080, container_port: 80, protocol: "tcp".into(), host_ip: String::new() }];
        let inv = Invocation { container_id: "c", netns: "/n", ifname: "eth0", args: "", ports: &ports };
        let c = l.plugin_conf(&json!({"type": "portmap", "capabilities": {"portMappings": true}}), None, &inv);
        assert_eq!(c["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert!(c.get("capabilities").is_none());
        let c = l.plugin_conf(&json!({"type": "bridge"}), Some(&json!({"x": 1})), &inv);
        assert!(c.get("runtimeConfig").is_none());
        assert_eq!(c["prevResult"]["x"], 1);
    }
}
