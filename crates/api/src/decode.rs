//! Decoding of manifests: YAML or JSON, one or more documents (`---`), at API versions
//! v1alpha2, v1alpha3 and v1alpha4, always yielding v1alpha4 objects.
//!
//! Input is bounded before it is parsed ([`MAX_MANIFEST_BYTES`], and the YAML parser's own
//! alias-expansion and depth limits guard against "billion laughs"). Errors name the field
//! path (`spec.memory: invalid size "12XB" ...`).
//!
//! Conversion: v1alpha3 VM, Image and Kernel are field-for-field v1alpha4; v1alpha3
//! Configuration lacks `registryConfigDir`. v1alpha2 keeps a VM's IPs in
//! `status.ipAddresses`, which moves to `status.network.ipAddresses`; v1alpha2 has no
//! Configuration kind.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::meta::{API_VERSION, GROUP};
use crate::types::{Configuration, Image, Kernel, Vm};

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// Most documents accepted in one file.
pub const MAX_DOCUMENTS: usize = 1000;

/// Any decoded object.
// A handful are decoded per manifest and moved out at once: boxing the VM buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Vm(Vm),
    Image(Image),
    Kernel(Kernel),
    Configuration(Configuration),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Vm(_) => Vm::KIND,
            Object::Image(_) => Image::KIND,
            Object::Kernel(_) => Kernel::KIND,
            Object::Configuration(_) => Configuration::KIND,
        }
    }
}

/// Why a manifest could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("manifest is too large ({size} bytes, at most {max})")]
    TooLarge { size: usize, max: usize },
    #[error("manifest has no document")]
    Empty,
    #[error("manifest holds {0} documents, expected exactly one")]
    NotOne(usize),
    #[error("manifest holds more than {MAX_DOCUMENTS} documents")]
    TooManyDocuments,
    #[error("document {doc}: malformed {format}: {message}")]
    Syntax { doc: usize, format: &'static str, message: String },
    #[error("document {doc}: missing apiVersion (expected {API_VERSION})")]
    MissingApiVersion { doc: usize },
    #[error("document {doc}: missing kind (expected VM, Image, Kernel or Configuration)")]
    MissingKind { doc: usize },
    #[error("document {doc}: unknown apiVersion {api_version:?} (supported: {GROUP}/v1alpha2, v1alpha3, v1alpha4)")]
    UnknownApiVersion { doc: usize, api_version: String },
    #[error("document {doc}: unknown kind {kind:?} in {api_version} (expected VM, Image, Kernel or Configuration)")]
    UnknownKind { doc: usize, api_version: String, kind: String },
    #[error("document {doc}: {kind} {name}: {path}: {message}")]
    Field { doc: usize, kind: String, name: String, path: String, message: String },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Version {
    V2,
    V3,
    V4,
}

/// Decodes exactly one object.
pub fn decode_object(bytes: &[u8]) -> Result<Object, DecodeError> {
    let mut objs = decode_objects(bytes)?;
    match objs.len() {
        0 => Err(DecodeError::Empty),
        1 => Ok(objs.remove(0)),
        n => Err(DecodeError::NotOne(n)),
    }
}

/// Decodes every document of a manifest (empty documents are skipped).
pub fn decode_objects(bytes: &[u8]) -> Result<Vec<Object>, DecodeError> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(DecodeError::TooLarge { size: bytes.len(), max: MAX_MANIFEST_BYTES });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::Syntax {
        doc: 1,
        format: "text",
        message: format!("not UTF-8: {e}"),
    })?;
    let docs = split_documents(text)?;
    let mut out = Vec::with_capacity(docs.len());
    for (i, v) in docs.into_iter().enumerate() {
        out.push(decode_value(i + 1, v)?);
    }
    Ok(out)
}

fn split_documents(text: &str) -> Result<Vec<Value>, DecodeError> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with('{') {
        let mut docs = Vec::new();
        let stream = serde_json::Deserializer::from_str(trimmed).into_iter::<Value>();
        for (i, v) in stream.enumerate() {
            if i >= MAX_DOCUMENTS {
                return Err(DecodeError::TooManyDocuments);
            }
            let v = v.map_err(|e| DecodeError::Syntax { doc: i + 1, format: "JSON", message: e.to_string() })?;
            docs.push(v);
        }
        return Ok(docs);
    }
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        if i >= MAX_DOCUMENTS {
            return Err(DecodeError::TooManyDocuments);
        }
        let v = Value::deserialize(de).map_err(|e| DecodeError::Syntax {
            doc: i + 1,
            format: "YAML",
            message: e.to_string(),
        })?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn decode_value(doc: usize, mut v: Value) -> Result<Object, DecodeError> {
    let obj = v.as_object().ok_or_else(|| DecodeError::Syntax {
        doc,
        format: "manifest",
        message: "a document must be a mapping".into(),
    })?;
    let api_version = match obj.get("apiVersion") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(DecodeError::UnknownApiVersion { doc, api_version: obj["apiVersion"].to_string() }),
        None => return Err(DecodeError::MissingApiVersion { doc }),
    };
    let kind = match obj.get("kind") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(DecodeError::UnknownKind { doc, api_version, kind: other.to_string() });
        }
        None => return Err(DecodeError::MissingKind { doc }),
    };
    let version = match api_version.strip_prefix(GROUP).and_then(|r| r.strip_prefix('/')) {
        Some("v1alpha2") => Version::V2,
        Some("v1alpha3") => Version::V3,
        Some("v1alpha4") => Version::V4,
        _ => return Err(DecodeError::UnknownApiVersion { doc, api_version }),
    };
    let name = obj
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(|n| format!("{n:?}"))
        .unwrap_or_else(|| "(unnamed)".into());
    let field_err = |path: String, message: String| DecodeError::Field {
        doc,
        kind: kind.clone(),
        name: name.clone(),
        path,
        message,
    };
    // Convert older versions to v1alpha4 at the value level, then decode strictly.
    if let Some(o) = v.as_object_mut() {
        o.insert("apiVersion".into(), Value::String(API_VERSION.into()));
    }
    match (version, kind.as_str()) {
        (Version::V2, "VM") => {
            convert_v1alpha2_vm(&mut v).map_err(|(path, m)| field_err(path.into(), m))?;
        }
        (Version::V2, "Configuration") => {
            return Err(DecodeError::UnknownKind { doc, api_version, kind });
        }
        (Version::V3, "Configuration") if v.get("spec").and_then(|s| s.get("registryConfigDir")).is_some() => {
            return Err(field_err(
                "spec.registryConfigDir".into(),
                "unknown field in v1alpha3 (it was added in v1alpha4)".into(),
            ));
        }
        _ => {}
    }
    if let Some(status) = v.get_mut("status") {
        drop_nulls(status);
    }
    let typed = |v: Value| -> Result<Object, DecodeError> {
        match kind.as_str() {
            "VM" => strict::<Vm>(v).map(Object::Vm),
            "Image" => strict::<Image>(v).map(Object::Image),
            "Kernel" => strict::<Kernel>(v).map(Object::Kernel),
            "Configuration" => strict::<Configuration>(v).map(Object::Configuration),
            _ => Err((String::new(), String::new())),
        }
        .map_err(|(path, msg)| {
            if path.is_empty() && msg.is_empty() {
                DecodeError::UnknownKind { doc, api_version: api_version.clone(), kind: kind.clone() }
            } else {
                field_err(path, msg)
            }
        })
    };
    match typed(v.clone()) {
        // A status is what some host observed (Ignite wrote `image: {id: null, size: 0B}` and
        // the like); it is never a request, so a status this version cannot read is set aside
        // (keeping `running`, which ignited reads as the request) rather than refusing the
        // manifest.
        Err(DecodeError::Field { path, .. }) if path == "status" || path.starts_with("status.") => {
            let running = v.get("status").and_then(|s| s.get("running")).cloned();
            if let Some(o) = v.as_object_mut() {
                let mut st = serde_json::Map::new();
                if let Some(r) = running.filter(Value::is_boolean) {
                    st.insert("running".into(), r);
                }
                o.insert("status".into(), Value::Object(st));
            }
            typed(v)
        }
        r => r,
    }
}

/// Removes null values from objects (Go's `null` for unset pointers and slices).
fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.retain(|_, x| !x.is_null());
            o.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

fn strict<T: DeserializeOwned>(v: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { "(top level)".to_string() } else { path };
        (path, e.into_inner().to_string())
    })
}

/// The annotation that selects a VM's network plugin (as `--network-plugin`).
const NETWORK_PLUGIN_ANNOTATION: &str = "ignite.weave.works/network-plugin";

fn convert_v1alpha2_vm(v: &mut Value) -> Result<(), (&'static str, String)> {
    // Early v1alpha2 (and v1alpha1) manifests chose the network per VM: `spec.network.mode`.
    let mode = v
        .get_mut("spec")
        .and_then(|s| s.get_mut("network"))
        .and_then(Value::as_object_mut)
        .and_then(|n| n.remove("mode"));
    if let Some(mode) = mode.filter(|m| !m.is_null()) {
        let plugin = match mode.as_str() {
            Some("cni" | "docker-bridge") => "cni",
            _ => return Err(("spec.network.mode", format!("unknown network mode {mode}: use cni or docker-bridge"))),
        };
        let meta = v.as_object_mut().map(|o| o.entry("metadata").or_insert_with(|| Value::Object(Default::default())));
        if let Some(Value::Object(m)) = meta {
            let ann = m.entry("annotations").or_insert_with(|| Value::Object(Default::default()));
            if let Value::Object(a) = ann {
                a.entry(NETWORK_PLUGIN_ANNOTATION).or_insert_with(|| Value::String(plugin.into()));
            }
        }
    }
    let Some(status) = v.get_mut("status").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    if status.contains_key("network") {
        return Err(("status.ipAddresses", "v1alpha2 has no status.network; use status.ipAddresses".into()));
    }
    if let Some(ips) = status.remove("ipAddresses") {
        let mut net = serde_json::Map::new();
        net.insert("plugin".into(), Value::String(String::new()));
        net.insert("ipAddresses".into(), if ips.is_null() { Value::Array(vec![]) } else { ips });
        status.insert("network".into(), Value::Object(net));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::Size;
    use crate::types::Ssh;

    const DOC_V4: &str = "apiVersion: ignite.weave.works/v1alpha4
kind: VM
metadata:
  name: my-vm
spec:
  image:
    oci: weaveworks/ignite-ubuntu
  cpus: 2
  diskSize: 3GB
  memory: 800MB
";

    fn vm(o: Object) -> Vm {
        match o {
            Object::Vm(v) => v,
            other => panic!("not a VM: {other:?}"),
        }
    }

    #[test]
    fn reads_ignite_doc_example() {
        let v = vm(decode_object(DOC_V4.as_bytes()).unwrap());
        assert_eq!(v.metadata.name, "my-vm");
        assert_eq!(v.spec.cpus, 2);
        assert_eq!(v.spec.memory, Some(Size::from_mib(800)));
        assert_eq!(v.spec.disk_size, Some(Size::from_mib(3072)));
        assert_eq!(v.spec.image.oci.unwrap().normalized(), "docker.io/weaveworks/ignite-ubuntu:latest");
    }

    #[test]
    fn json_and_yaml_agree() {
        let y = vm(decode_object(DOC_V4.as_bytes()).unwrap());
        let j = serde_json::to_string(&y).unwrap();
        let y2 = vm(decode_object(j.as_bytes()).unwrap());
        assert_eq!(y, y2);
    }

    #[test]
    fn manifests_written_by_ignite_with_status_blocks_are_read() {
        // As `ignite inspect vm -o yaml` of Weave Ignite v0.10 printed a VM that never ran.
        let doc = "apiVersion: ignite.weave.works/v1alpha4
kind: VM
metadata:
  created: \"2021-09-01T12:00:00Z\"
  name: my-vm
  uid: 599615df99804ae8
spec:
  cpus: 1
  diskSize: 4GB
  image:
    oci: weaveworks/ignite-ubuntu:latest
  kernel:
    cmdLine: console=ttyS0 reboot=k panic=1 pci=off ip=dhcp
    oci: weaveworks/ignite-kernel:5.10.51
  memory: 512MB
  network: {}
  sandbox:
    oci: weaveworks/ignite:dev
  storage: {}
status:
  idPrefix: ignite
  image:
    id: null
    size: 0B
  kernel:
    id: null
    size: 0B
  network:
    ipAddresses: null
    plugin: cni
  running: true
  runtime: null
  startTime: null
";
        let Object::Vm(vm) = decode_object(doc.as_bytes()).unwrap() else { panic!() };
        assert_eq!(vm.metadata.name, "my-vm");
        assert!(vm.status.running, "status.running is kept: ignited reads it as the request");
    }

    #[test]
    fn v1alpha2_network_mode_selects_the_plugin() {
        let doc = "apiVersion: ignite.weave.works/v1alpha2
kind: VM
metadata: {name: old}
spec:
  image: {oci: busybox}
  network:
    mode: cni
    ports: [{hostPort: 8080, vmPort: 80}]
";
        let Object::Vm(vm) = decode_object(doc.as_bytes()).unwrap() else { panic!() };
        assert_eq!(vm.metadata.annotations.get("ignite.weave.works/network-plugin").map(String::as_str), Some("cni"));
        assert_eq!(vm.spec.network.ports.len(), 1);
        let bad = doc.replace("mode: cni", "mode: warp");
        let e = decode_object(bad.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("spec.network.mode") && e.contains("unknown network mode"), "{e}");
    }

    #[test]
    fn v1alpha2_status_converts() {
        let doc = "apiVersion: ignite.weave.works/v1alpha2
kind: VM
metadata: {name: old, uid: e04128e6f96176a8}
spec: {image: {oci: alpine}, ssh: true}
status:
  running: true
  ipAddresses: [172.17.0.2]
";
        let v = vm(decode_object(doc.as_bytes()).unwrap());
        assert_eq!(v.api_version, API_VERSION);
        assert_eq!(v.status.network.unwrap().ip_addresses, vec!["172.17.0.2".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(v.spec.ssh, Some(Ssh::Generate));
    }

    #[test]
    fn multi_document() {
        let doc = format!("{DOC_V4}---\n{}\n---\n", DOC_V4.replace("my-vm", "other"));
        let objs = decode_objects(doc.as_bytes()).unwrap();
        assert_eq!(objs.len(), 2);
        assert!(matches!(decode_object(doc.as_bytes()), Err(DecodeError::NotOne(2))));
    }

    #[test]
    fn errors_name_the_field() {
        let bad = DOC_V4.replace("800MB", "12XB");
        let e = decode_object(bad.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("spec.memory") && e.contains("12XB"), "{e}");
        let bad = DOC_V4.replace("cpus: 2", "cpus: 2\n  cpu: 3");
        let e = decode_object(bad.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("spec") && e.contains("unknown field `cpu`"), "{e}");
        let bad = DOC_V4.replace("v1alpha4", "v1beta9");
        assert!(matches!(decode_object(bad.as_bytes()), Err(DecodeError::UnknownApiVersion { .. })));
        let bad = DOC_V4.replace("kind: VM", "kind: Pod");
        assert!(matches!(decode_object(bad.as_bytes()), Err(DecodeError::UnknownKind { .. })));
        let bad = DOC_V4.replace("kind: VM\n", "");
        assert!(matches!(decode_object(bad.as_bytes()), Err(DecodeError::MissingKind { .. })));
        let bad = DOC_V4.replace("weaveworks/ignite-ubuntu", "Bad Ref");
        let e = decode_object(bad.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("spec.image.oci"), "{e}");
        assert!(matches!(decode_object(b"- a\n- b\n"), Err(DecodeError::Syntax { .. })));
        assert!(matches!(decode_object(b"a: [\n"), Err(DecodeError::Syntax { .. })));
        assert!(matches!(decode_object(b""), Err(DecodeError::Empty)));
    }

    #[test]
    fn configuration_versions() {
        let c = "apiVersion: ignite.weave.works/v1alpha3\nkind: Configuration\nmetadata: {name: c}\nspec:\n  runtime: containerd\n  networkPlugin: cni\n  vmDefaults: {memory: 2GB, diskSize: 3GB, cpus: 2}\n";
        assert!(matches!(decode_object(c.as_bytes()).unwrap(), Object::Configuration(_)));
        let c3 = format!("{c}  registryConfigDir: /x\n");
        assert!(decode_object(c3.as_bytes()).unwrap_err().to_string().contains("registryConfigDir"));
        let c4 = c3.replace("v1alpha3", "v1alpha4");
        assert!(decode_object(c4.as_bytes()).is_ok());
        let c2 = c.replace("v1alpha3", "v1alpha2");
        assert!(matches!(decode_object(c2.as_bytes()), Err(DecodeError::UnknownKind { .. })));
    }

    #[test]
    fn yaml_bomb_is_refused() {
        let mut doc = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        let mut prev = 'a';
        for c in 'b'..='j' {
            doc.push_str(&format!(
                "{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
            ));
            prev = c;
        }
        let start = std::time::Instant::now();
        assert!(decode_object(doc.as_bytes()).is_err());
        assert!(start.elapsed().as_secs() < 5);
        let deep = "[".repeat(100_000);
        assert!(decode_object(deep.as_bytes()).is_err());
        let deep_json = format!("{{\"a\":{}", "[".repeat(100_000));
        assert!(decode_object(deep_json.as_bytes()).is_err());
    }

    #[test]
    fn huge_is_refused() {
        let big = vec![b'#'; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(decode_object(&big), Err(DecodeError::TooLarge { .. })));
    }
}
