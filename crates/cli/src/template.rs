//! Go templates over objects, for `--template` (`ps -t`, `inspect -t`) and `ps --filter`.
//!
//! # Templates
//!
//! `{{...}}` templates are Go's `text/template` as Weave Ignite ran them (`template.New("")`
//! over the Go object), for the subset its docs, its e2e tests and Docker-style scripts use:
//! text with actions `{{pipeline}}`, `{{if P}}…{{else if Q}}…{{else}}…{{end}}`,
//! `{{range .X}}…{{else}}…{{end}}` (with `$e :=` or `$i, $e :=`, `break`, `continue`),
//! `{{with .X}}…{{else with .Y}}…{{end}}`, variables (`$`, `$x := …`, `$x = …`), pipelines
//! (`{{.X | json}}`), parenthesised pipelines with field chains (`{{(index .L 0).Port}}`),
//! comments `{{/* */}}` and trim markers `{{- ` / ` -}}`; literals (strings, raw strings,
//! characters, numbers, `true`, `false`, `nil`); the functions `and`, `or`, `not`, `len`,
//! `index`, `print`, `printf`, `println`, `eq`, `ne`, `lt`, `le`, `gt`, `ge`, and Docker's `json`,
//! `upper`, `lower` and `join`. Not supported: `define`/`template`/`block`, method calls (such as
//! `.Created.Time.Format`), `slice`, `html`, `js`, `urlquery`, `call`, complex numbers.
//!
//! Field names are matched as Ignite's Go struct fields (`{{.Spec.CPUs}}`), and also, ignoring
//! case, as the JSON names (`{{.spec.cpus}}`), as this command always did. `ObjectMeta` and
//! `TypeMeta` are embedded, so `{{.Name}}` and `{{.Kind}}` work; `{{.Status.IPAddresses}}` (the
//! v1alpha2 path) finds `status.network.ipAddresses`; `{{.X[0]}}` indexes a list (an extension:
//! Go spells it `{{index .X 0}}`). A field that a struct does not have is an error that names it
//! (`can't evaluate field Nope in type v1alpha4.VMSpec`); a missing key of a map (labels,
//! annotations) prints `<no value>`, as in Go; so does a missing key of an untyped object. A
//! literal `\n` or `\t` in the template's text (not inside actions) becomes a newline or a tab,
//! as Docker does. `ps` checks a template's fields against the VM type before listing, so a bad
//! field fails even when no VM is listed.
//!
//! # Values and their text form
//!
//! Templates run over the object's JSON, which does not say what Go type a value had: `VM`,
//! `IMAGE`, `KERNEL` and `SNAPSHOT` below (the schema, chosen by the object's `kind`) are that type
//! information, in one place: each Ignite struct with its Go field names, JSON names and Go
//! types, plus ignite's own extension fields (`Spec.VMM`, `Spec.Agent`, `Status.Runtime.PID`,
//! `Status.Runtime.Accel`, `Status.Exit`). A test checks that every field ignite writes is in
//! it. A value prints as Ignite's Go value printed (its `String()` where it has one):
//!
//! | Go type (paths) | text | JSON (`json`) |
//! | --- | --- | --- |
//! | `meta.Size` (`.Spec.Memory`, `.Spec.DiskSize`, `…OCISource.Size`) | `512.0 MB`, `1024.0 MB`, `4.0 GB` (datasize's `HumanReadable`) | `"512MB"` |
//! | `runtime.Time` (`.Created`, `.Status.StartTime`, and their `.Time`) | Go's `time.Time` form, `2006-01-02 15:04:05.999999999 +0000 UTC` (1) | RFC 3339 |
//! | `meta.PortMappings` (`.Spec.Network.Ports`) | `0.0.0.0:8080->80/tcp, 0.0.0.0:443->443/tcp` | the list |
//! | `meta.IPAddresses` (`.Status.Network.IPAddresses`) | `10.61.0.2, 10.61.0.3` | the list |
//! | `meta.OCIImageRef` (`.Spec.Image.OCI`) | its short form, `weaveworks/ignite-ubuntu:latest` | the same string |
//! | `*meta.OCIContentID` (`.Status.Image.ID`) | `docker.io/library/alpine@sha256:…`, `<nil>` when unset | the same |
//! | `*SSH` (`.Spec.SSH`) | `{true }`, `{false /key.pub}`, `<nil>` | `true` / the path |
//! | other slices, maps, structs | `[a b]`, `map[k:v]` (keys sorted), `{f1 f2}` | JSON |
//! | pointers (`*T`) unset | `<nil>`; set: the value (Go would print an address inside a struct) | `null` |
//!
//! (1) Ignite's `runtime.Time.String()` printed the age (`5m`); ignite prints the time itself,
//! which stays the same from one call to the next (what scripts compare), as Docker does.
//!
//! A field the JSON omits prints as its Go zero value (`0`, `""`, `[]`, `0 B`, `<nil>`).
//! `Status.Runtime` and `Status.Network` are structs, not pointers, as Ignite defaults them;
//! so is `Status.Exit` (its `.Reason` is empty before any exit). An unset image reference is
//! false in `if`/`with` (Go's struct would always be true, and print garbage).
//! `eq`/`ne`/`lt`… compare such values (sizes, image references, IPs) by their text with a
//! string, where Go would refuse to compare different types.
//!
//! Templates are user input: a template longer than 64 KiB or nested deeper than 64 is refused,
//! execution stops after a million steps or 16 MiB of output, and no input panics.
//!
//! # JSONPath
//!
//! The JSONPath form (`{.status.network.ipAddresses[0]}`, `jsonpath={...}`, as kubectl) uses JSON
//! names and indexes and prints the JSON values (strings bare, lists as `[a b]`).
//!
//! # Filters
//!
//! `ps --filter` terms are `TEMPLATE OP VALUE`, comma separated and all required, with `OP` one
//! of `=`, `==`, `!=`, `=~` (contains), `!~` (does not contain), as Ignite's; the template is
//! rendered as above (`{{.Spec.Memory}}=~512` compares with `512.0 MB`). A bare path
//! (`name=my-vm`, `.metadata.name=my-vm`) is taken as `{{.path}}`.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Longest template accepted, in bytes.
const MAX_LEN: usize = 64 * 1024;
/// Deepest nesting of control structures and parentheses.
const MAX_DEPTH: usize = 64;
/// Execution steps (nodes and range iterations) before giving up.
const MAX_STEPS: u64 = 1_000_000;
/// Longest output of one execution, in bytes.
const MAX_OUTPUT: usize = 16 << 20;
/// Largest printf width or precision.
const MAX_WIDTH: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// The template does not parse (Go's message: `template: :1: unclosed action`).
    #[error("invalid template: {0}")]
    Parse(String),
    /// The template failed on an object (Go's message, naming the field or function).
    #[error("failed rendering template: {0}")]
    Exec(String),
    #[error("invalid filter {0:?}: expected FIELD=VALUE, FIELD!=VALUE, FIELD=~VALUE or FIELD!~VALUE")]
    BadFilter(String),
}

// ---------------------------------------------------------------------------------------------
// The schema: Ignite's Go types of the objects' fields.
// ---------------------------------------------------------------------------------------------

/// The Go type of a value in an object.
#[derive(Debug)]
enum Ty {
    /// Untyped JSON: objects of unknown kinds. Keys match ignoring case; absent keys are
    /// `<no value>`.
    Any,
    /// A string (named string types carry their Go name, for messages).
    Str(&'static str),
    Uint(&'static str),
    Int(&'static str),
    Bool,
    /// `meta.Size`.
    Size,
    /// libgitops' `runtime.Time` (`.Time` is the `metav1.Time`): Go's time form.
    Time,
    /// `metav1.Time` (`.Time` again is the `time.Time`) and `time.Time`: Go's time form.
    GoTime(&'static str),
    /// `meta.OCIImageRef`.
    ImageRef,
    /// `*meta.OCIContentID`.
    ContentId,
    /// `net.IP`.
    Ip,
    /// `*SSH`: JSON `true` or a public key path; Go fields `Generate`, `PublicKey`.
    Ssh,
    Ptr(&'static Ty),
    /// A slice: its element type, how it prints, its Go type name.
    List(&'static Ty, Sep, &'static str),
    /// `map[string]string`.
    Map,
    Struct(&'static StructTy),
}

/// How a slice prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sep {
    /// Go's `[a b]`.
    Go,
    /// A `String()` joining with `, ` (Ignite's `IPAddresses`, `PortMappings`).
    Comma,
}

#[derive(Debug)]
struct StructTy {
    name: &'static str,
    fields: &'static [F],
    /// The type's `String()`, if it has one.
    stringer: Option<fn(&Value) -> String>,
}

/// A struct field: Go name, JSON location (`""`: the same JSON object, as an inline embedded
/// struct; dotted: a path), type; embedded fields promote their fields; aliases are old
/// names that do not print as part of the struct.
#[derive(Debug)]
struct F {
    go: &'static str,
    json: &'static str,
    ty: &'static Ty,
    embedded: bool,
    alias: bool,
}

const fn f(go: &'static str, json: &'static str, ty: &'static Ty) -> F {
    F { go, json, ty, embedded: false, alias: false }
}

const fn embed(go: &'static str, json: &'static str, ty: &'static Ty) -> F {
    F { go, json, ty, embedded: true, alias: false }
}

const fn alias(go: &'static str, json: &'static str, ty: &'static Ty) -> F {
    F { go, json, ty, embedded: false, alias: true }
}

/// A struct type without a `String()`.
macro_rules! st {
    ($name:expr, $fields:expr $(,)?) => {
        Ty::Struct(&StructTy { name: $name, fields: $fields, stringer: None })
    };
}

static ANY: Ty = Ty::Any;
static STRING: Ty = Ty::Str("string");
static UINT64: Ty = Ty::Uint("uint64");
static BOOL: Ty = Ty::Bool;
static SIZE: Ty = Ty::Size;
static TIME: Ty = Ty::Time;
static TIME_PTR: Ty = Ty::Ptr(&TIME);
static META_TIME: Ty = Ty::GoTime("v1.Time");
static GO_TIME: Ty = Ty::GoTime("time.Time");
static IMAGE_REF: Ty = Ty::ImageRef;
static CONTENT_ID: Ty = Ty::ContentId;
static IP: Ty = Ty::Ip;
static IP_LIST: Ty = Ty::List(&IP, Sep::Comma, "v1alpha1.IPAddresses");
static MAP: Ty = Ty::Map;

static METAV1_TYPE_META: Ty = st!("v1.TypeMeta", &[f("Kind", "kind", &STRING), f("APIVersion", "apiVersion", &STRING)]);
static TYPE_META: Ty = st!("runtime.TypeMeta", &[embed("TypeMeta", "", &METAV1_TYPE_META)]);
static OBJECT_META: Ty = st!(
    "runtime.ObjectMeta",
    &[
        f("Name", "name", &STRING),
        f("UID", "uid", &Ty::Str("runtime.UID")),
        f("Created", "created", &TIME),
        f("Labels", "labels", &MAP),
        f("Annotations", "annotations", &MAP),
    ],
);

static OCI_SOURCE: Ty = st!("v1alpha4.OCIImageSource", &[f("ID", "id", &CONTENT_ID), f("Size", "size", &SIZE)]);

static PORT: Ty = Ty::Struct(&StructTy {
    name: "v1alpha1.PortMapping",
    fields: &[
        f("BindAddress", "bindAddress", &IP),
        f("HostPort", "hostPort", &UINT64),
        f("VMPort", "vmPort", &UINT64),
        f("Protocol", "protocol", &Ty::Str("v1alpha1.Protocol")),
    ],
    stringer: Some(port_text),
});

static VM_SPEC: Ty = st!(
    "v1alpha4.VMSpec",
    &[
        f("Image", "image", &st!("v1alpha4.VMImageSpec", &[f("OCI", "oci", &IMAGE_REF)])),
        f("Sandbox", "sandbox", &st!("v1alpha4.VMSandboxSpec", &[f("OCI", "oci", &IMAGE_REF)])),
        f(
            "Kernel",
            "kernel",
            &st!("v1alpha4.VMKernelSpec", &[f("OCI", "oci", &IMAGE_REF), f("CmdLine", "cmdLine", &STRING)]),
        ),
        f("CPUs", "cpus", &UINT64),
        f("Memory", "memory", &SIZE),
        f("DiskSize", "diskSize", &SIZE),
        f(
            "Network",
            "network",
            &st!(
                "v1alpha4.VMNetworkSpec",
                &[f("Ports", "ports", &Ty::List(&PORT, Sep::Comma, "v1alpha1.PortMappings"))]
            ),
        ),
        f(
            "Storage",
            "storage",
            &st!(
                "v1alpha4.VMStorageSpec",
                &[
                    f(
                        "Volumes",
                        "volumes",
                        &Ty::List(
                            &st!(
                                "v1alpha4.Volume",
                                &[
                                    f("Name", "name", &STRING),
                                    f(
                                        "BlockDevice",
                                        "blockDevice",
                                        &Ty::Ptr(&st!("v1alpha4.BlockDeviceVolume", &[f("Path", "path", &STRING)])),
                                    ),
                                ],
                            ),
                            Sep::Go,
                            "[]v1alpha4.Volume",
                        ),
                    ),
                    f(
                        "VolumeMounts",
                        "volumeMounts",
                        &Ty::List(
                            &st!(
                                "v1alpha4.VolumeMount",
                                &[f("Name", "name", &STRING), f("MountPath", "mountPath", &STRING)],
                            ),
                            Sep::Go,
                            "[]v1alpha4.VolumeMount",
                        ),
                    ),
                ],
            ),
        ),
        f(
            "CopyFiles",
            "copyFiles",
            &Ty::List(
                &st!("v1alpha4.FileMapping", &[f("HostPath", "hostPath", &STRING), f("VMPath", "vmPath", &STRING)]),
                Sep::Go,
                "[]v1alpha4.FileMapping",
            ),
        ),
        f("SSH", "ssh", &Ty::Ssh),
        // ignite extensions
        f("VMM", "vmm", &STRING),
        f("Agent", "agent", &Ty::Ptr(&BOOL)),
        f("Jail", "jail", &Ty::Ptr(&BOOL)),
    ],
);

static VM_STATUS: Ty = st!(
    "v1alpha4.VMStatus",
    &[
        f("Running", "running", &BOOL),
        f(
            "Runtime",
            "runtime",
            &st!(
                "v1alpha4.Runtime",
                &[
                    f("ID", "id", &STRING),
                    f("Name", "name", &Ty::Str("runtime.Name")),
                    // ignite extensions
                    f("PID", "pid", &Ty::Ptr(&Ty::Uint("uint32"))),
                    f("Accel", "accel", &STRING),
                    f(
                        "Jail",
                        "jail",
                        &Ty::Ptr(&st!(
                            "v1alpha4.JailStatus",
                            &[
                                f("UID", "uid", &Ty::Uint("uint32")),
                                f("Cgroups", "cgroups", &Ty::List(&STRING, Sep::Go, "[]string")),
                                f("MemoryMax", "memoryMax", &Ty::Ptr(&Ty::Uint("uint64"))),
                                f("CPUMax", "cpuMax", &STRING),
                                f("Seccomp", "seccomp", &STRING),
                            ],
                        )),
                    ),
                ],
            ),
        ),
        f("StartTime", "startTime", &TIME_PTR),
        f(
            "Network",
            "network",
            &st!(
                "v1alpha4.Network",
                &[f("Plugin", "plugin", &Ty::Str("network.PluginName")), f("IPAddresses", "ipAddresses", &IP_LIST)],
            ),
        ),
        f("Image", "image", &OCI_SOURCE),
        f("Kernel", "kernel", &OCI_SOURCE),
        f("IDPrefix", "idPrefix", &STRING),
        // ignite extension: a struct (not a pointer), so `.Status.Exit.Reason` is "" before any exit
        f(
            "Exit",
            "exit",
            &st!(
                "v1alpha4.ExitStatus",
                &[
                    f("Code", "code", &Ty::Ptr(&Ty::Int("int32"))),
                    f("Reason", "reason", &STRING),
                    f("Time", "time", &TIME_PTR),
                ],
            ),
        ),
        // v1alpha2's place of the addresses
        alias("IPAddresses", "network.ipAddresses", &IP_LIST),
    ],
);

/// `ignite.weave.works/v1alpha4` VM.
static VM: Ty = st!(
    "v1alpha4.VM",
    &[
        embed("TypeMeta", "", &TYPE_META),
        embed("ObjectMeta", "metadata", &OBJECT_META),
        f("Spec", "spec", &VM_SPEC),
        f("Status", "status", &VM_STATUS),
    ],
);

/// `ignite.weave.works/v1alpha4` Image.
static IMAGE: Ty = st!(
    "v1alpha4.Image",
    &[
        embed("TypeMeta", "", &TYPE_META),
        embed("ObjectMeta", "metadata", &OBJECT_META),
        f("Spec", "spec", &st!("v1alpha4.ImageSpec", &[f("OCI", "oci", &IMAGE_REF)])),
        f("Status", "status", &st!("v1alpha4.ImageStatus", &[f("OCISource", "ociSource", &OCI_SOURCE)])),
    ],
);

/// `ignite.weave.works/v1alpha4` Kernel.
static KERNEL: Ty = st!(
    "v1alpha4.Kernel",
    &[
        embed("TypeMeta", "", &TYPE_META),
        embed("ObjectMeta", "metadata", &OBJECT_META),
        f("Spec", "spec", &st!("v1alpha4.KernelSpec", &[f("OCI", "oci", &IMAGE_REF)])),
        f(
            "Status",
            "status",
            &st!(
                "v1alpha4.KernelStatus",
                &[f("Version", "version", &STRING), f("OCISource", "ociSource", &OCI_SOURCE)]
            ),
        ),
    ],
);

/// ignite's Snapshot: its metadata as every object's (`.Name`, `.UID`, `.Created`), its spec
/// and status untyped (an ignite kind, which Weave Ignite's templates never saw).
static SNAPSHOT: Ty = st!(
    "v1alpha4.Snapshot",
    &[
        embed("TypeMeta", "", &TYPE_META),
        embed("ObjectMeta", "metadata", &OBJECT_META),
        f("Spec", "spec", &ANY),
        f("Status", "status", &ANY),
    ],
);

/// The type of an object, by its `kind`.
fn root_ty(v: &Value) -> &'static Ty {
    match v.get("kind").and_then(Value::as_str) {
        Some("VM") => &VM,
        Some("Image") => &IMAGE,
        Some("Kernel") => &KERNEL,
        Some("Snapshot") => &SNAPSHOT,
        _ => &ANY,
    }
}

fn go_name(ty: &Ty) -> String {
    match ty {
        Ty::Any => "interface {}".into(),
        Ty::Str(n) | Ty::Uint(n) | Ty::Int(n) | Ty::GoTime(n) => (*n).into(),
        Ty::Bool => "bool".into(),
        Ty::Size => "v1alpha1.Size".into(),
        Ty::Time => "runtime.Time".into(),
        Ty::ImageRef => "v1alpha1.OCIImageRef".into(),
        Ty::ContentId => "*v1alpha1.OCIContentID".into(),
        Ty::Ip => "net.IP".into(),
        Ty::Ssh => "*v1alpha4.SSH".into(),
        Ty::Ptr(t) => format!("*{}", go_name(t)),
        Ty::List(_, _, n) => (*n).into(),
        Ty::Map => "map[string]string".into(),
        Ty::Struct(s) => s.name.into(),
    }
}

static NULL: Value = Value::Null;

/// The JSON of field `f` inside `j` (null when absent).
fn json_child<'a>(j: &'a Value, f: &F) -> &'a Value {
    if f.json.is_empty() {
        return j;
    }
    f.json.split('.').fold(j, |cur, k| cur.get(k).unwrap_or(&NULL))
}

/// Finds a field of a struct by Go name (exactly, then ignoring case), then by JSON name
/// ignoring case, then among the fields of embedded structs. Returns the path of fields.
fn find_field(s: &'static StructTy, name: &str) -> Option<Vec<&'static F>> {
    let hit = s
        .fields
        .iter()
        .find(|f| f.go == name)
        .or_else(|| s.fields.iter().find(|f| f.go.eq_ignore_ascii_case(name)))
        .or_else(|| s.fields.iter().find(|f| !f.json.is_empty() && f.json.eq_ignore_ascii_case(name)));
    if let Some(f) = hit {
        return Some(vec![f]);
    }
    for e in s.fields.iter().filter(|f| f.embedded) {
        if let Ty::Struct(inner) = e.ty {
            if let Some(mut path) = find_field(inner, name) {
                path.insert(0, e);
                return Some(path);
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Text forms of Ignite's types.
// ---------------------------------------------------------------------------------------------

/// datasize's `HumanReadable`, which Ignite's `Size.String()` is (see `Size::human`).
fn size_text(bytes: u64) -> String {
    ignite_api::Size::from_bytes(bytes).human()
}

fn size_bytes(j: &Value) -> Option<u64> {
    match j {
        Value::String(s) => s.parse::<ignite_api::Size>().ok().map(|s| s.bytes()),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn port_text(j: &Value) -> String {
    match serde_json::from_value::<ignite_api::PortMapping>(j.clone()) {
        Ok(p) => p.to_string(),
        Err(_) => go_string(Some(j)),
    }
}

fn parse_time(j: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(j.as_str()?).ok().map(|t| t.with_timezone(&Utc))
}

/// Go's `time.Time.String()` of a UTC time: `2006-01-02 15:04:05.999999999 +0000 UTC`.
fn go_time(t: Option<DateTime<Utc>>) -> String {
    let Some(t) = t else { return "0001-01-01 00:00:00 +0000 UTC".into() };
    let mut s = t.format("%Y-%m-%d %H:%M:%S").to_string();
    let nanos = t.timestamp_subsec_nanos().min(999_999_999);
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s + " +0000 UTC"
}

/// Go's `%v` of a float64 (`strconv.FormatFloat(f, 'g', -1, 64)`).
fn go_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    // Shortest digits and exponent, from Rust's shortest round-trip form.
    let e = format!("{:e}", x.abs());
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    let sign = if x < 0.0 { "-" } else { "" };
    if !(-4..6).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let m = if rest.is_empty() { first.to_string() } else { format!("{first}.{rest}") };
        return format!("{sign}{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    // %f with the shortest digits.
    let dp = exp + 1; // digits before the point
    let s = if dp <= 0 {
        format!("0.{}{}", "0".repeat((-dp) as usize), digits)
    } else if dp as usize >= digits.len() {
        format!("{}{}", digits, "0".repeat(dp as usize - digits.len()))
    } else {
        format!("{}.{}", &digits[..dp as usize], &digits[dp as usize..])
    };
    format!("{sign}{s}")
}

/// Go's `strconv.Quote`.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                if (c as u32) < 0x10000 {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                } else {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------------
// Lexer.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Field(String),
    Dot,
    Var(String),
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Nil,
    Index(usize),
    Pipe,
    LParen,
    RParen,
    Declare,
    Assign,
    Comma,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    pos: usize,
    end: usize,
    /// Whether whitespace precedes the token (`.A.B` is a chain, `.A .B` two operands).
    space: bool,
}

#[derive(Debug)]
enum Item {
    Text(String),
    Action { pos: usize, end: usize, toks: Vec<Token> },
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

fn line_of(src: &str, pos: usize) -> usize {
    1 + src.as_bytes()[..pos.min(src.len())].iter().filter(|&&c| c == b'\n').count()
}

fn parse_err(src: &str, pos: usize, msg: impl std::fmt::Display) -> TemplateError {
    TemplateError::Parse(format!("template: :{}: {msg}", line_of(src, pos)))
}

/// Docker's escapes in template text.
fn unescape_text(t: &str) -> String {
    t.replace("\\n", "\n").replace("\\t", "\t")
}

/// The right delimiter at `p`: its end and whether it trims (` -}}`).
fn at_right_delim(src: &str, p: usize) -> Option<(usize, bool)> {
    let b = src.as_bytes();
    if src[p..].starts_with("}}") {
        return Some((p + 2, false));
    }
    if p + 1 < b.len() && is_space(b[p]) && src[p + 1..].starts_with("-}}") {
        return Some((p + 4, true));
    }
    None
}

fn lex(src: &str) -> Result<Vec<Item>, TemplateError> {
    let b = src.as_bytes();
    let mut items = Vec::new();
    let mut i = 0;
    let mut trim_start = false;
    loop {
        let open = match src[i..].find("{{") {
            Some(o) => i + o,
            None => {
                push_text(&mut items, &src[i..], trim_start, false);
                return Ok(items);
            }
        };
        let mut p = open + 2;
        let left_trim = b.get(p) == Some(&b'-') && b.get(p + 1).is_some_and(|c| is_space(*c));
        if left_trim {
            p += 2;
        }
        push_text(&mut items, &src[i..open], trim_start, left_trim);
        let (after, right_trim) = if src[p..].starts_with("/*") {
            let close = src[p + 2..].find("*/").ok_or_else(|| parse_err(src, open, "unclosed comment"))? + p + 4;
            at_right_delim(src, close).ok_or_else(|| parse_err(src, open, "comment ends before closing delimiter"))?
        } else {
            let (toks, end, rt) = lex_action(src, p, open)?;
            items.push(Item::Action { pos: open, end, toks });
            (end, rt)
        };
        i = after;
        trim_start = right_trim;
    }
}

fn push_text(items: &mut Vec<Item>, raw: &str, trim_start: bool, trim_end: bool) {
    let t = unescape_text(raw);
    let is_ws = |c: char| matches!(c, ' ' | '\t' | '\r' | '\n');
    let mut t = t.as_str();
    if trim_start {
        t = t.trim_start_matches(is_ws);
    }
    if trim_end {
        t = t.trim_end_matches(is_ws);
    }
    if !t.is_empty() {
        items.push(Item::Text(t.to_string()));
    }
}

/// Lexes one action from `p` (after `{{`); returns its tokens, the end of its right delimiter
/// and whether that trims.
fn lex_action(src: &str, mut p: usize, open: usize) -> Result<(Vec<Token>, usize, bool), TemplateError> {
    let b = src.as_bytes();
    let mut toks = Vec::new();
    let mut space = true;
    loop {
        if let Some((end, trim)) = at_right_delim(src, p) {
            return Ok((toks, end, trim));
        }
        let Some(c) = src[p..].chars().next() else {
            return Err(parse_err(src, open, "unclosed action"));
        };
        if c.is_ascii_whitespace() {
            p += 1;
            space = true;
            continue;
        }
        let start = p;
        let tok = match c {
            '|' => {
                p += 1;
                Tok::Pipe
            }
            '(' => {
                p += 1;
                Tok::LParen
            }
            ')' => {
                p += 1;
                Tok::RParen
            }
            ',' => {
                p += 1;
                Tok::Comma
            }
            '=' => {
                p += 1;
                Tok::Assign
            }
            ':' => {
                if b.get(p + 1) != Some(&b'=') {
                    return Err(parse_err(src, p, "expected :="));
                }
                p += 2;
                Tok::Declare
            }
            '"' | '`' => {
                let (s, end) = lex_string(src, p)?;
                p = end;
                Tok::Str(s)
            }
            '\'' => {
                let (s, end) = lex_string(src, p)?;
                p = end;
                let mut cs = s.chars();
                match (cs.next(), cs.next()) {
                    (Some(ch), None) => Tok::Int(ch as i64),
                    _ => {
                        return Err(parse_err(src, start, format!("malformed character constant: {}", &src[start..p])))
                    }
                }
            }
            '$' => {
                p += 1;
                p += ident_len(&src[p..]);
                Tok::Var(src[start..p].to_string())
            }
            '.' if b.get(p + 1).is_some_and(u8::is_ascii_digit) => {
                let (t, end) = lex_number(src, p)?;
                p = end;
                t
            }
            '.' => {
                p += 1;
                let n = ident_len(&src[p..]);
                p += n;
                if n == 0 {
                    Tok::Dot
                } else {
                    Tok::Field(src[start + 1..p].to_string())
                }
            }
            '[' => {
                let close = src[p..].find(']').map(|i| p + i).ok_or_else(|| parse_err(src, p, "unclosed index"))?;
                let n = src[p + 1..close]
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| parse_err(src, p, format!("bad index {}", &src[p..=close])))?;
                p = close + 1;
                Tok::Index(n)
            }
            '+' | '-' | '0'..='9' => {
                let (t, end) = lex_number(src, p)?;
                p = end;
                t
            }
            c if is_ident_char(c) => {
                p += ident_len(&src[p..]);
                match &src[start..p] {
                    "true" => Tok::Bool(true),
                    "false" => Tok::Bool(false),
                    "nil" => Tok::Nil,
                    w => Tok::Ident(w.to_string()),
                }
            }
            c => return Err(parse_err(src, p, format!("unrecognized character in action: {c:?}"))),
        };
        // Fields, variables, identifiers and numbers must end at a terminator.
        if matches!(tok, Tok::Field(_) | Tok::Var(_) | Tok::Ident(_) | Tok::Bool(_) | Tok::Nil | Tok::Dot) {
            if let Some(next) = src[p..].chars().next() {
                let terminator = next.is_ascii_whitespace()
                    || matches!(next, '.' | ',' | '|' | ':' | ')' | '(' | '[' | '=')
                    || at_right_delim(src, p).is_some();
                if !terminator {
                    return Err(parse_err(src, p, format!("bad character {next:?}")));
                }
            }
        }
        toks.push(Token { tok, pos: start, end: p, space });
        space = false;
    }
}

fn ident_len(s: &str) -> usize {
    s.char_indices().find(|(_, c)| !is_ident_char(*c)).map(|(i, _)| i).unwrap_or(s.len())
}

/// A quoted string (`"…"` with Go's escapes, `` `…` `` raw, `'…'` a character) at `p`.
fn lex_string(src: &str, p: usize) -> Result<(String, usize), TemplateError> {
    let quote = src.as_bytes()[p] as char;
    let mut out = String::new();
    let mut chars = src[p + 1..].char_indices();
    let unterminated = || parse_err(src, p, "unterminated quoted string");
    if quote == '`' {
        let close = src[p + 1..].find('`').ok_or_else(|| parse_err(src, p, "unterminated raw quoted string"))?;
        return Ok((src[p + 1..p + 1 + close].replace('\r', ""), p + close + 2));
    }
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == quote => return Ok((out, p + 1 + i + 1)),
            '\n' => return Err(unterminated()),
            '\\' => {
                let (_, e) = chars.next().ok_or_else(unterminated)?;
                let bad = || parse_err(src, p + 1 + i, "invalid syntax in quoted string");
                match e {
                    'a' => out.push('\x07'),
                    'b' => out.push('\x08'),
                    'f' => out.push('\x0c'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    'v' => out.push('\x0b'),
                    '\\' => out.push('\\'),
                    '"' | '\'' if e == quote => out.push(e),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let mut v = 0u32;
                        for _ in 0..n {
                            let (_, h) = chars.next().ok_or_else(unterminated)?;
                            v = v * 16 + h.to_digit(16).ok_or_else(bad)?;
                        }
                        out.push(char::from_u32(v).ok_or_else(bad)?);
                    }
                    '0'..='7' => {
                        let mut v = e.to_digit(8).unwrap_or(0);
                        for _ in 0..2 {
                            let (_, o) = chars.next().ok_or_else(unterminated)?;
                            v = v * 8 + o.to_digit(8).ok_or_else(bad)?;
                        }
                        out.push(char::from_u32(v).filter(|_| v < 256).ok_or_else(bad)?);
                    }
                    _ => return Err(bad()),
                }
            }
            c => out.push(c),
        }
    }
    Err(unterminated())
}

/// A number at `p`, as Go's lexer scans it; an integer when it is one, else a float.
fn lex_number(src: &str, p: usize) -> Result<(Tok, usize), TemplateError> {
    let b = src.as_bytes();
    let mut q = p;
    if matches!(b.get(q), Some(b'+' | b'-')) {
        q += 1;
    }
    let mut radix = 10;
    if b.get(q) == Some(&b'0') && matches!(b.get(q + 1), Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')) {
        radix = match b[q + 1] {
            b'x' | b'X' => 16,
            b'o' | b'O' => 8,
            _ => 2,
        };
        q += 2;
    }
    let digit = |c: u8| c == b'_' || (c as char).is_digit(radix);
    while b.get(q).is_some_and(|&c| digit(c)) {
        q += 1;
    }
    let mut float = false;
    if radix == 10 {
        if b.get(q) == Some(&b'.') {
            float = true;
            q += 1;
            while b.get(q).is_some_and(|&c| digit(c)) {
                q += 1;
            }
        }
        if matches!(b.get(q), Some(b'e' | b'E')) {
            float = true;
            q += 1;
            if matches!(b.get(q), Some(b'+' | b'-')) {
                q += 1;
            }
            while b.get(q).is_some_and(u8::is_ascii_digit) {
                q += 1;
            }
        }
    }
    let text = &src[p..q];
    let shown = src.get(p..q + 1).unwrap_or(&src[p..q]);
    let bad = || parse_err(src, p, format!("bad number syntax: {shown:?}"));
    if let Some(c) = src[q..].chars().next() {
        if is_ident_char(c) || c == '.' {
            return Err(bad());
        }
    }
    let clean: String = text.chars().filter(|&c| c != '_').collect();
    let (neg, body) = match clean.strip_prefix('-') {
        Some(r) => (true, r.to_string()),
        None => (false, clean.trim_start_matches('+').to_string()),
    };
    if body.is_empty() || body == "." {
        return Err(bad());
    }
    if float {
        let v: f64 = clean.parse().map_err(|_| bad())?;
        return Ok((Tok::Float(v), q));
    }
    let digits = if radix == 10 { &body[..] } else { &body[2..] };
    let (digits, radix) =
        if radix == 10 && digits.len() > 1 && digits.starts_with('0') { (&digits[1..], 8) } else { (digits, radix) };
    match i64::from_str_radix(digits, radix) {
        Ok(v) => Ok((Tok::Int(if neg { -v } else { v }), q)),
        Err(_) if radix == 10 => {
            let v: f64 = clean.parse().map_err(|_| bad())?;
            Ok((Tok::Float(v), q))
        }
        Err(_) => Err(parse_err(src, p, format!("number out of range: {text}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Parser.
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Node {
    Text(String),
    Action(Pipe),
    If { pipe: Pipe, then: Vec<Node>, els: Vec<Node> },
    Range { pipe: Pipe, body: Vec<Node>, els: Vec<Node> },
    With { pipe: Pipe, then: Vec<Node>, els: Vec<Node> },
    Break,
    Continue,
}

#[derive(Debug)]
struct Pipe {
    decl: Vec<String>,
    assign: bool,
    cmds: Vec<Cmd>,
}

#[derive(Debug)]
struct Cmd {
    pos: usize,
    end: usize,
    args: Vec<Arg>,
}

#[derive(Debug)]
struct Arg {
    /// Where errors point (Go: the second field of a chain).
    pos: usize,
    start: usize,
    end: usize,
    kind: ArgKind,
}

#[derive(Debug)]
enum ArgKind {
    /// `.A.B[0]`: steps from dot.
    Field(Vec<Step>),
    Var(String, Vec<Step>),
    /// `(pipeline).A`
    Chain(Box<Pipe>, Vec<Step>),
    Pipe(Box<Pipe>),
    Func(Func),
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Nil,
}

#[derive(Debug, Clone)]
enum Step {
    Field(String),
    Index(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    And,
    Or,
    Not,
    Len,
    Index,
    Print,
    Printf,
    Println,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Json,
    Upper,
    Lower,
    Join,
}

impl Func {
    fn by_name(n: &str) -> Option<Func> {
        Some(match n {
            "and" => Func::And,
            "or" => Func::Or,
            "not" => Func::Not,
            "len" => Func::Len,
            "index" => Func::Index,
            "print" => Func::Print,
            "printf" => Func::Printf,
            "println" => Func::Println,
            "eq" => Func::Eq,
            "ne" => Func::Ne,
            "lt" => Func::Lt,
            "le" => Func::Le,
            "gt" => Func::Gt,
            "ge" => Func::Ge,
            "json" => Func::Json,
            "upper" => Func::Upper,
            "lower" => Func::Lower,
            "join" => Func::Join,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Func::And => "and",
            Func::Or => "or",
            Func::Not => "not",
            Func::Len => "len",
            Func::Index => "index",
            Func::Print => "print",
            Func::Printf => "printf",
            Func::Println => "println",
            Func::Eq => "eq",
            Func::Ne => "ne",
            Func::Lt => "lt",
            Func::Le => "le",
            Func::Gt => "gt",
            Func::Ge => "ge",
            Func::Json => "json",
            Func::Upper => "upper",
            Func::Lower => "lower",
            Func::Join => "join",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctl {
    If,
    Range,
    With,
}

/// What ended a list of nodes.
enum Term {
    Eof,
    End,
    /// `{{else}}`, or `{{else if …}}` / `{{else with …}}` with the keyword's tokens.
    Else(usize, Option<(Ctl, usize, Vec<Token>)>),
}

struct Parser<'s> {
    src: &'s str,
    items: std::vec::IntoIter<Item>,
    vars: Vec<String>,
    depth: usize,
    ranges: usize,
}

fn parse(src: &str) -> Result<Vec<Node>, TemplateError> {
    if src.len() > MAX_LEN {
        return Err(too_long(src.len()));
    }
    let items = lex(src)?;
    let mut p = Parser { src, items: items.into_iter(), vars: vec!["$".into()], depth: 0, ranges: 0 };
    let (nodes, term) = p.list()?;
    match term {
        Term::Eof => Ok(nodes),
        Term::End => Err(parse_err(src, src.len(), "unexpected {{end}}")),
        Term::Else(pos, _) => Err(parse_err(src, pos, "unexpected {{else}}")),
    }
}

impl Parser<'_> {
    fn err(&self, pos: usize, msg: impl std::fmt::Display) -> TemplateError {
        parse_err(self.src, pos, msg)
    }

    fn list(&mut self) -> Result<(Vec<Node>, Term), TemplateError> {
        let mut nodes = Vec::new();
        while let Some(item) = self.items.next() {
            let (pos, end, toks) = match item {
                Item::Text(t) => {
                    nodes.push(Node::Text(t));
                    continue;
                }
                Item::Action { pos, end, toks } => (pos, end, toks),
            };
            let kw = match toks.first().map(|t| &t.tok) {
                Some(Tok::Ident(w)) => w.as_str(),
                _ => "",
            };
            let ctl = match kw {
                "if" => Some(Ctl::If),
                "range" => Some(Ctl::Range),
                "with" => Some(Ctl::With),
                _ => None,
            };
            match kw {
                "end" | "break" | "continue" if toks.len() > 1 => {
                    return Err(self.err(pos, format!("unexpected {:?} in {kw}", &self.src[toks[1].pos..toks[1].end])))
                }
                "end" => return Ok((nodes, Term::End)),
                "else" => {
                    let next = match toks.get(1).map(|t| &t.tok) {
                        None => None,
                        Some(Tok::Ident(w)) if w == "if" => Some((Ctl::If, toks[1].pos, toks[2..].to_vec())),
                        Some(Tok::Ident(w)) if w == "with" => Some((Ctl::With, toks[1].pos, toks[2..].to_vec())),
                        Some(_) => {
                            return Err(self.err(pos, format!("unexpected {:?} in else", &self.src[toks[1].pos..end])))
                        }
                    };
                    return Ok((nodes, Term::Else(pos, next)));
                }
                "break" | "continue" => {
                    if self.ranges == 0 {
                        return Err(self.err(pos, format!("{{{{{kw}}}}} outside {{{{range}}}}")));
                    }
                    nodes.push(if kw == "break" { Node::Break } else { Node::Continue });
                }
                "define" | "template" | "block" => {
                    return Err(self.err(pos, format!("{{{{{kw}}}}} is not supported")));
                }
                _ => match ctl {
                    Some(c) => nodes.push(self.control(c, pos, &toks[1..])?),
                    None => {
                        if toks.is_empty() {
                            return Err(self.err(pos, "missing value for command"));
                        }
                        let pipe = self.pipeline(&toks, false, true)?;
                        nodes.push(Node::Action(pipe));
                    }
                },
            }
        }
        Ok((nodes, Term::Eof))
    }

    fn control(&mut self, ctl: Ctl, pos: usize, toks: &[Token]) -> Result<Node, TemplateError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(pos, format!("templates may nest at most {MAX_DEPTH} deep")));
        }
        if toks.is_empty() {
            let kw = match ctl {
                Ctl::If => "if",
                Ctl::Range => "range",
                Ctl::With => "with",
            };
            return Err(self.err(pos, format!("missing value for {kw}")));
        }
        let mark = self.vars.len();
        let pipe = self.pipeline(toks, ctl == Ctl::Range, true)?;
        if ctl == Ctl::Range {
            self.ranges += 1;
        }
        let (body, term) = self.list()?;
        if ctl == Ctl::Range {
            self.ranges -= 1;
        }
        let els = match term {
            Term::Eof => return Err(self.err(self.src.len(), "unexpected EOF")),
            Term::End => vec![],
            Term::Else(_, None) => match self.list()? {
                (e, Term::End) => e,
                (_, Term::Eof) => return Err(self.err(self.src.len(), "unexpected EOF")),
                (_, Term::Else(p, _)) => return Err(self.err(p, "expected end; found {{else}}")),
            },
            Term::Else(p, Some((c2, p2, toks2))) => {
                if c2 != ctl {
                    return Err(self.err(p, "unexpected {{else}} form"));
                }
                vec![self.control(c2, p2, &toks2)?]
            }
        };
        self.vars.truncate(mark);
        self.depth -= 1;
        Ok(match ctl {
            Ctl::If => Node::If { pipe, then: body, els },
            Ctl::Range => Node::Range { pipe, body, els },
            Ctl::With => Node::With { pipe, then: body, els },
        })
    }

    /// A pipeline: optional declarations (two only for range), then commands joined by `|`.
    fn pipeline(&mut self, toks: &[Token], range: bool, decl_ok: bool) -> Result<Pipe, TemplateError> {
        let mut i = 0;
        let mut decl = Vec::new();
        let mut assign = false;
        if decl_ok {
            let is_op = |t: Option<&Token>| matches!(t.map(|t| &t.tok), Some(Tok::Declare | Tok::Assign));
            if let Some(Tok::Var(v)) = toks.first().map(|t| &t.tok) {
                if is_op(toks.get(1)) {
                    decl.push(v.clone());
                    assign = toks[1].tok == Tok::Assign;
                    i = 2;
                } else if range && matches!(toks.get(1).map(|t| &t.tok), Some(Tok::Comma)) && is_op(toks.get(3)) {
                    if let Some(Tok::Var(v2)) = toks.get(2).map(|t| &t.tok) {
                        decl.push(v.clone());
                        decl.push(v2.clone());
                        assign = toks[3].tok == Tok::Assign;
                        i = 4;
                    }
                }
            }
        }
        if decl.iter().any(|d| d == "$") {
            return Err(self.err(toks[0].pos, "cannot declare or assign $"));
        }
        if assign {
            if let Some(v) = decl.iter().find(|d| !self.vars.contains(d)) {
                return Err(self.err(toks[0].pos, format!("undefined variable {v:?}")));
            }
        }
        let mut cmds = Vec::new();
        let rest = &toks[i..];
        if rest.is_empty() {
            let at = toks.last().map(|t| t.pos).unwrap_or(0);
            return Err(self.err(at, "missing value for command"));
        }
        let mut start = 0;
        let mut depth = 0i64;
        for (j, t) in rest.iter().enumerate().chain(std::iter::once((rest.len(), &rest[rest.len() - 1]))) {
            let at_end = j == rest.len();
            if !at_end {
                match t.tok {
                    Tok::LParen => depth += 1,
                    Tok::RParen => depth -= 1,
                    _ => {}
                }
            }
            if at_end || (t.tok == Tok::Pipe && depth == 0) {
                let part = &rest[start..j];
                if part.is_empty() {
                    return Err(self.err(t.pos, "missing command"));
                }
                let cmd = self.command(part)?;
                let literal = matches!(
                    cmd.args[0].kind,
                    ArgKind::Str(_) | ArgKind::Int(_) | ArgKind::Float(_) | ArgKind::Bool(_) | ArgKind::Nil
                );
                if !cmds.is_empty() && literal {
                    return Err(
                        self.err(cmd.pos, format!("non executable command in pipeline stage {}", cmds.len() + 1))
                    );
                }
                cmds.push(cmd);
                start = j + 1;
            }
        }
        if !assign {
            self.vars.extend(decl.iter().cloned());
        }
        Ok(Pipe { decl, assign, cmds })
    }

    fn command(&mut self, toks: &[Token]) -> Result<Cmd, TemplateError> {
        let mut args = Vec::new();
        let mut i = 0;
        while i < toks.len() {
            if i > 0 && !toks[i].space {
                return Err(
                    self.err(toks[i].pos, format!("missing space? unexpected {:?} in operand", self.text(&toks[i])))
                );
            }
            let (arg, next) = self.operand(toks, i)?;
            args.push(arg);
            i = next;
        }
        if let ArgKind::Nil = args[0].kind {
            return Err(self.err(args[0].pos, "nil is not a command"));
        }
        if args.len() > 1 && !matches!(args[0].kind, ArgKind::Func(_)) {
            return Err(self.err(
                args[0].pos,
                format!("can't give argument to non-function {}", &self.src[args[0].start..args[0].end]),
            ));
        }
        Ok(Cmd { pos: toks[0].pos, end: toks[toks.len() - 1].end, args })
    }

    fn text(&self, t: &Token) -> String {
        self.src[t.pos..t.end].to_string()
    }

    fn operand(&mut self, toks: &[Token], i: usize) -> Result<(Arg, usize), TemplateError> {
        let t = &toks[i];
        let mut j = i + 1;
        let mut kind = match &t.tok {
            Tok::Field(n) => ArgKind::Field(vec![Step::Field(n.clone())]),
            Tok::Dot => ArgKind::Field(vec![]),
            Tok::Var(v) => {
                if !self.vars.contains(v) {
                    return Err(self.err(t.pos, format!("undefined variable {v:?}")));
                }
                ArgKind::Var(v.clone(), vec![])
            }
            Tok::Ident(n) => match Func::by_name(n) {
                Some(f) => ArgKind::Func(f),
                None => return Err(self.err(t.pos, format!("function {n:?} not defined"))),
            },
            Tok::Str(s) => ArgKind::Str(s.clone()),
            Tok::Int(n) => ArgKind::Int(*n),
            Tok::Float(x) => ArgKind::Float(*x),
            Tok::Bool(b) => ArgKind::Bool(*b),
            Tok::Nil => ArgKind::Nil,
            Tok::LParen => {
                let close = matching_paren(toks, i).ok_or_else(|| self.err(t.pos, "unclosed left paren"))?;
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(self.err(t.pos, format!("templates may nest at most {MAX_DEPTH} deep")));
                }
                if close == i + 1 {
                    return Err(self.err(t.pos, "missing value for parenthesized pipeline"));
                }
                let p = self.pipeline(&toks[i + 1..close], false, true)?;
                self.depth -= 1;
                j = close + 1;
                ArgKind::Pipe(Box::new(p))
            }
            Tok::RParen => return Err(self.err(t.pos, "unexpected right paren")),
            _ => return Err(self.err(t.pos, format!("unexpected {:?} in operand", self.text(t)))),
        };
        let mut steps = Vec::new();
        let mut pos = t.pos;
        while let Some(n) = toks.get(j).filter(|n| !n.space) {
            match &n.tok {
                Tok::Field(name) => {
                    if steps.is_empty() {
                        pos = n.pos;
                    }
                    steps.push(Step::Field(name.clone()));
                }
                Tok::Index(k) => steps.push(Step::Index(*k)),
                _ => break,
            }
            j += 1;
        }
        if !steps.is_empty() {
            kind = match kind {
                ArgKind::Field(mut s) => {
                    s.extend(steps);
                    ArgKind::Field(s)
                }
                ArgKind::Var(v, _) => ArgKind::Var(v, steps),
                ArgKind::Pipe(p) => ArgKind::Chain(p, steps),
                _ => return Err(self.err(toks[i + 1].pos, format!("unexpected . after term {:?}", self.text(t)))),
            };
        }
        let end = toks[j - 1].end;
        Ok((Arg { pos, start: t.pos, end, kind }, j))
    }
}

fn matching_paren(toks: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0;
    for (k, t) in toks.iter().enumerate().skip(open) {
        match t.tok {
            Tok::LParen => depth += 1,
            Tok::RParen => {
                depth -= 1;
                if depth == 0 {
                    return Some(k);
                }
            }
            _ => {}
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Values and execution.
// ---------------------------------------------------------------------------------------------

/// A value during execution: a literal or function result, or a value of the object with its
/// Go type.
#[derive(Debug, Clone)]
enum Val<'a> {
    /// Go's invalid value (a missing map key): prints `<no value>`.
    Missing,
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Obj(&'a Value, &'static Ty),
}

impl Val<'_> {
    fn type_name(&self) -> String {
        match self {
            Val::Missing | Val::Nil => "<nil>".into(),
            Val::Bool(_) => "bool".into(),
            Val::Int(_) => "int".into(),
            Val::Float(_) => "float64".into(),
            Val::Str(_) => "string".into(),
            Val::Obj(_, ty) => go_name(ty),
        }
    }

    /// Whether Go would see a string (a kind-string type).
    fn is_string(&self) -> bool {
        matches!(self, Val::Str(_) | Val::Obj(_, Ty::Str(_)))
    }

    fn int(&self) -> Option<i128> {
        match self {
            Val::Int(n) => Some(*n as i128),
            Val::Obj(j, Ty::Uint(_) | Ty::Int(_)) => j
                .as_i64()
                .map(i128::from)
                .or_else(|| j.as_u64().map(i128::from))
                .or(if j.is_null() { Some(0) } else { None }),
            Val::Obj(j, Ty::Ptr(Ty::Uint(_) | Ty::Int(_))) => {
                j.as_i64().map(i128::from).or_else(|| j.as_u64().map(i128::from))
            }
            _ => None,
        }
    }

    fn bool(&self) -> Option<bool> {
        match self {
            Val::Bool(b) => Some(*b),
            Val::Obj(j, Ty::Bool) => Some(j.as_bool().unwrap_or(false)),
            Val::Obj(j, Ty::Ptr(Ty::Bool)) => j.as_bool(),
            _ => None,
        }
    }

    /// A nil pointer, nil, or a missing value.
    fn is_nil(&self) -> bool {
        match self {
            Val::Missing | Val::Nil => true,
            Val::Obj(j, Ty::Ptr(_) | Ty::ContentId | Ty::Ssh) => j.is_null(),
            _ => false,
        }
    }

    fn json(&self) -> Value {
        match self {
            Val::Missing | Val::Nil => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Int(n) => Value::from(*n),
            Val::Float(x) => serde_json::Number::from_f64(*x).map(Value::Number).unwrap_or(Value::Null),
            Val::Str(s) => Value::String(s.clone()),
            Val::Obj(j, _) => (*j).clone(),
        }
    }
}

/// Go's truth: false, 0, "", empty slices and maps, nil pointers and missing values are false;
/// structs are true.
fn truth(v: &Val) -> bool {
    match v {
        Val::Missing | Val::Nil => false,
        Val::Bool(b) => *b,
        Val::Int(n) => *n != 0,
        Val::Float(x) => *x != 0.0,
        Val::Str(s) => !s.is_empty(),
        Val::Obj(j, ty) => match ty {
            Ty::Any => match j {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::Object(o) => !o.is_empty(),
            },
            // An image reference is a struct in Go (always true); unset is false here.
            Ty::Str(_) | Ty::Ip | Ty::ImageRef => j.as_str().is_some_and(|s| !s.is_empty()),
            Ty::Uint(_) | Ty::Int(_) => j.as_f64().is_some_and(|x| x != 0.0),
            Ty::Bool => j.as_bool().unwrap_or(false),
            Ty::Ptr(_) | Ty::ContentId | Ty::Ssh => !j.is_null(),
            Ty::List(..) => j.as_array().is_some_and(|a| !a.is_empty()),
            Ty::Map => j.as_object().is_some_and(|o| !o.is_empty()),
            Ty::Size | Ty::Time | Ty::GoTime(_) | Ty::Struct(_) => true,
        },
    }
}

/// Prints a value of the object as Go prints it (see the module doc).
fn obj_text(j: &Value, ty: &Ty) -> String {
    match ty {
        Ty::Any => go_string(Some(j)),
        Ty::Str(_) | Ty::ImageRef => match j {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
        Ty::Uint(_) | Ty::Int(_) => match j {
            Value::Null => "0".into(),
            other => other.to_string(),
        },
        Ty::Bool => j.as_bool().unwrap_or(false).to_string(),
        Ty::Size => match j {
            Value::Null => size_text(0),
            other => size_bytes(other).map(size_text).unwrap_or_else(|| go_string(Some(other))),
        },
        Ty::Time | Ty::GoTime(_) => match (parse_time(j), j) {
            (Some(t), _) => go_time(Some(t)),
            (None, Value::Null) => go_time(None),
            (None, other) => go_string(Some(other)),
        },
        Ty::ContentId | Ty::Ip => match j {
            Value::Null => "<nil>".into(),
            other => go_string(Some(other)),
        },
        Ty::Ssh => match j {
            Value::Null | Value::Bool(false) => "<nil>".into(),
            Value::Bool(true) => "{true }".into(),
            Value::String(p) => format!("{{false {p}}}"),
            other => go_string(Some(other)),
        },
        Ty::Ptr(t) => match j {
            Value::Null => "<nil>".into(),
            other => obj_text(other, t),
        },
        Ty::List(t, sep, _) => {
            let items: Vec<String> =
                j.as_array().map(|a| a.iter().map(|x| obj_text(x, t)).collect()).unwrap_or_default();
            match sep {
                Sep::Go => format!("[{}]", items.join(" ")),
                Sep::Comma => items.join(", "),
            }
        }
        Ty::Map => {
            let mut kv: Vec<(&String, &Value)> = j.as_object().map(|o| o.iter().collect()).unwrap_or_default();
            kv.sort_by(|a, b| a.0.cmp(b.0));
            let parts: Vec<String> = kv.iter().map(|(k, v)| format!("{k}:{}", obj_text(v, &STRING))).collect();
            format!("map[{}]", parts.join(" "))
        }
        Ty::Struct(s) => match s.stringer {
            Some(string) => string(j),
            None => {
                let parts: Vec<String> =
                    s.fields.iter().filter(|f| !f.alias).map(|f| obj_text(json_child(j, f), f.ty)).collect();
                format!("{{{}}}", parts.join(" "))
            }
        },
    }
}

/// Prints untyped JSON as Go's text/template prints decoded JSON: strings bare, lists as
/// `[a b]`, maps as `map[k:v]`, absent as `<no value>`.
pub fn go_string(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "<no value>".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => format!("[{}]", a.iter().map(|x| go_string(Some(x))).collect::<Vec<_>>().join(" ")),
        Some(Value::Object(o)) => {
            let mut kv: Vec<_> = o.iter().collect();
            kv.sort_by(|a, b| a.0.cmp(b.0));
            format!(
                "map[{}]",
                kv.iter().map(|(k, x)| format!("{k}:{}", go_string(Some(x)))).collect::<Vec<_>>().join(" ")
            )
        }
        Some(other) => other.to_string(),
    }
}

enum Flow {
    Normal,
    Break,
    Continue,
}

struct Exec<'a, 's> {
    src: &'s str,
    vars: Vec<(String, Val<'a>)>,
    out: String,
    steps: u64,
}

/// A failure with where it happened, as Go words it.
struct Fail {
    pos: usize,
    at: (usize, usize),
    msg: String,
}

type R<T> = Result<T, Fail>;

fn fail<T>(pos: usize, at: (usize, usize), msg: impl Into<String>) -> R<T> {
    Err(Fail { pos, at, msg: msg.into() })
}

impl<'a> Exec<'a, '_> {
    fn to_error(&self, f: Fail) -> TemplateError {
        let before = &self.src[..f.pos.min(self.src.len())];
        let line = 1 + before.matches('\n').count();
        let col = before.rfind('\n').map(|n| f.pos - n - 1).unwrap_or(f.pos);
        let at = self.src.get(f.at.0..f.at.1).unwrap_or("");
        TemplateError::Exec(format!("template: :{line}:{col}: executing \"\" at <{at}>: {}", f.msg))
    }

    fn text(&self, v: &Val) -> String {
        match v {
            Val::Missing => "<no value>".into(),
            Val::Nil => "<nil>".into(),
            Val::Bool(b) => b.to_string(),
            Val::Int(n) => n.to_string(),
            Val::Float(x) => go_float(*x),
            Val::Str(s) => s.clone(),
            Val::Obj(j, ty) => obj_text(j, ty),
        }
    }

    fn tick(&mut self, pos: usize) -> R<()> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return fail(pos, (pos, pos), format!("template execution exceeded {MAX_STEPS} steps"));
        }
        if self.out.len() > MAX_OUTPUT {
            return fail(pos, (pos, pos), format!("template output exceeded {MAX_OUTPUT} bytes"));
        }
        Ok(())
    }

    fn nodes(&mut self, dot: &Val<'a>, nodes: &[Node]) -> R<Flow> {
        for n in nodes {
            self.tick(0)?;
            match n {
                Node::Text(t) => self.out.push_str(t),
                Node::Action(p) => {
                    let v = self.pipe(dot, p)?;
                    if p.decl.is_empty() {
                        let s = self.text(&v);
                        self.out.push_str(&s);
                    }
                }
                Node::If { pipe, then, els } | Node::With { pipe, then, els } => {
                    let mark = self.vars.len();
                    let v = self.pipe(dot, pipe)?;
                    let flow = if truth(&v) {
                        let d = if matches!(n, Node::With { .. }) { v } else { dot.clone() };
                        self.nodes(&d, then)?
                    } else {
                        self.nodes(dot, els)?
                    };
                    self.vars.truncate(mark);
                    if !matches!(flow, Flow::Normal) {
                        return Ok(flow);
                    }
                }
                Node::Range { pipe, body, els } => {
                    let mark = self.vars.len();
                    let v = self.pipe(dot, pipe)?;
                    let items = self.range_items(&v, pipe)?;
                    let inner = self.vars.len();
                    let empty = items.is_empty();
                    for (k, e) in items {
                        self.tick(0)?;
                        match &pipe.decl[..] {
                            [v] => self.set_var(v, e.clone()),
                            [i, v] => {
                                self.set_var(i, k);
                                self.set_var(v, e.clone());
                            }
                            _ => {}
                        }
                        let flow = self.nodes(&e, body)?;
                        self.vars.truncate(inner);
                        if matches!(flow, Flow::Break) {
                            break;
                        }
                    }
                    if empty {
                        self.vars.truncate(mark);
                        let flow = self.nodes(dot, els)?;
                        if !matches!(flow, Flow::Normal) {
                            return Ok(flow);
                        }
                    }
                    self.vars.truncate(mark);
                }
                Node::Break => return Ok(Flow::Break),
                Node::Continue => return Ok(Flow::Continue),
            }
        }
        Ok(Flow::Normal)
    }

    /// (key, element) pairs of what a range iterates over.
    fn range_items(&self, v: &Val<'a>, pipe: &Pipe) -> R<Vec<(Val<'a>, Val<'a>)>> {
        let list = |a: &'a Vec<Value>, t: &'static Ty| -> Vec<(Val<'a>, Val<'a>)> {
            a.iter().enumerate().map(|(i, x)| (Val::Int(i as i64), Val::Obj(x, t))).collect()
        };
        let map = |o: &'a serde_json::Map<String, Value>, t: &'static Ty| -> Vec<(Val<'a>, Val<'a>)> {
            let mut kv: Vec<_> = o.iter().map(|(k, x)| (Val::Str(k.clone()), Val::Obj(x, t))).collect();
            kv.sort_by(|a, b| match (&a.0, &b.0) {
                (Val::Str(x), Val::Str(y)) => x.cmp(y),
                _ => std::cmp::Ordering::Equal,
            });
            kv
        };
        Ok(match v {
            Val::Missing | Val::Nil => vec![],
            Val::Int(n) => (0..(*n).max(0)).map(|i| (Val::Int(i), Val::Int(i))).collect(),
            Val::Obj(Value::Null, _) => vec![],
            Val::Obj(Value::Array(a), Ty::List(t, ..)) => list(a, t),
            Val::Obj(Value::Array(a), Ty::Any) => list(a, &ANY),
            Val::Obj(Value::Object(o), Ty::Map) => map(o, &STRING),
            Val::Obj(Value::Object(o), Ty::Any) => map(o, &ANY),
            other => {
                let c = pipe.cmds.last().map(|c| (c.pos, c.end)).unwrap_or((0, 0));
                return fail(c.0, c, format!("range can't iterate over {}", self.text(other)));
            }
        })
    }

    fn set_var(&mut self, name: &str, v: Val<'a>) {
        if let Some(slot) = self.vars.iter_mut().rev().find(|(n, _)| n == name) {
            slot.1 = v;
        }
    }

    fn pipe(&mut self, dot: &Val<'a>, p: &Pipe) -> R<Val<'a>> {
        let mut v: Option<Val<'a>> = None;
        for c in &p.cmds {
            v = Some(self.cmd(dot, c, v)?);
        }
        let v = v.unwrap_or(Val::Missing);
        for name in &p.decl {
            if p.assign {
                self.set_var(name, v.clone());
            } else {
                self.vars.push((name.clone(), v.clone()));
            }
        }
        Ok(v)
    }

    fn cmd(&mut self, dot: &Val<'a>, c: &Cmd, fin: Option<Val<'a>>) -> R<Val<'a>> {
        let first = &c.args[0];
        if let ArgKind::Func(f) = first.kind {
            return self.call(dot, f, c, &c.args[1..], fin);
        }
        if fin.is_some() {
            return fail(
                first.pos,
                (first.start, first.end),
                format!("can't give argument to non-function {}", &self.src[first.start..first.end]),
            );
        }
        self.arg(dot, first)
    }

    fn arg(&mut self, dot: &Val<'a>, a: &Arg) -> R<Val<'a>> {
        let at = (a.start, a.end);
        match &a.kind {
            ArgKind::Field(steps) => self.steps_from(dot.clone(), steps, a.pos, at),
            ArgKind::Var(name, steps) => {
                let v = self.vars.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.clone());
                let Some(v) = v else { return fail(a.pos, at, format!("undefined variable: {name}")) };
                self.steps_from(v, steps, a.pos, at)
            }
            ArgKind::Chain(p, steps) => {
                let v = self.pipe(dot, p)?;
                self.steps_from(v, steps, a.pos, at)
            }
            ArgKind::Pipe(p) => self.pipe(dot, p),
            // A function as an argument is called with no arguments.
            ArgKind::Func(f) => {
                let c = Cmd { pos: a.pos, end: a.end, args: vec![] };
                self.call(dot, *f, &c, &[], None)
            }
            ArgKind::Str(s) => Ok(Val::Str(s.clone())),
            ArgKind::Int(n) => Ok(Val::Int(*n)),
            ArgKind::Float(x) => Ok(Val::Float(*x)),
            ArgKind::Bool(b) => Ok(Val::Bool(*b)),
            ArgKind::Nil => Ok(Val::Nil),
        }
    }

    fn steps_from(&self, mut v: Val<'a>, steps: &[Step], pos: usize, at: (usize, usize)) -> R<Val<'a>> {
        for s in steps {
            v = match s {
                Step::Field(name) => field(v, name).map_err(|msg| Fail { pos, at, msg })?,
                Step::Index(i) => index_one(&v, &Val::Int(*i as i64)).map_err(|msg| Fail { pos, at, msg })?,
            };
        }
        Ok(v)
    }
}

/// `.name` of a value.
fn field<'a>(v: Val<'a>, name: &str) -> Result<Val<'a>, String> {
    let cant = |ty: &str| Err(format!("can't evaluate field {name} in type {ty}"));
    let (j, ty) = match v {
        Val::Missing => return Ok(Val::Missing),
        Val::Nil => return Err(format!("nil pointer evaluating interface {{}}.{name}")),
        Val::Obj(j, ty) => (j, ty),
        other => return cant(&other.type_name()),
    };
    match ty {
        Ty::Any => Ok(match j.as_object() {
            Some(o) => o
                .get(name)
                .or_else(|| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, x)| x))
                .map(|x| Val::Obj(x, &ANY))
                .unwrap_or(Val::Missing),
            None => Val::Missing,
        }),
        Ty::Map => Ok(j.get(name).map(|x| Val::Obj(x, &STRING)).unwrap_or(Val::Missing)),
        Ty::Ptr(t) => {
            if j.is_null() {
                return Err(format!("nil pointer evaluating {}.{name}", go_name(ty)));
            }
            field(Val::Obj(j, t), name)
        }
        Ty::Struct(s) => match find_field(s, name) {
            Some(path) => {
                let last = path[path.len() - 1];
                let child = path.iter().fold(j, |cur, f| json_child(cur, f));
                Ok(Val::Obj(child, last.ty))
            }
            None => {
                // A field the schema does not know but the JSON has (a newer object).
                match j.as_object().and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))) {
                    Some((_, x)) => Ok(Val::Obj(x, &ANY)),
                    None => cant(s.name),
                }
            }
        },
        Ty::Time if name.eq_ignore_ascii_case("Time") => Ok(Val::Obj(j, &META_TIME)),
        Ty::GoTime("v1.Time") if name.eq_ignore_ascii_case("Time") => Ok(Val::Obj(j, &GO_TIME)),
        Ty::Ssh => {
            if j.is_null() || j == &Value::Bool(false) {
                return Err(format!("nil pointer evaluating *v1alpha4.SSH.{name}"));
            }
            if name.eq_ignore_ascii_case("Generate") {
                Ok(Val::Bool(j == &Value::Bool(true)))
            } else if name.eq_ignore_ascii_case("PublicKey") {
                Ok(Val::Str(j.as_str().unwrap_or("").to_string()))
            } else {
                cant("v1alpha4.SSH")
            }
        }
        other => cant(&go_name(other)),
    }
}

/// `index v k` for one key.
fn index_one<'a>(v: &Val<'a>, k: &Val<'a>) -> Result<Val<'a>, String> {
    let int_key = || -> Result<usize, String> {
        match k.int() {
            Some(i) if i >= 0 => usize::try_from(i).map_err(|_| format!("index out of range: {i}")),
            Some(i) => Err(format!("index out of range: {i}")),
            None => Err(format!("cannot index slice/array with type {}", k.type_name())),
        }
    };
    let str_key = || -> Result<String, String> {
        match k {
            Val::Str(s) => Ok(s.clone()),
            Val::Obj(Value::String(s), Ty::Str(_) | Ty::Any) => Ok(s.clone()),
            _ => Err(format!("value has type {}; should be string", k.type_name())),
        }
    };
    match v {
        Val::Missing | Val::Nil => Err("index of untyped nil".into()),
        Val::Str(s) => {
            let i = int_key()?;
            s.as_bytes().get(i).map(|b| Val::Int(i64::from(*b))).ok_or_else(|| format!("index out of range: {i}"))
        }
        Val::Obj(j, ty) => match (ty, j) {
            (Ty::List(t, ..), _) | (Ty::Ptr(Ty::List(t, ..)), _) => {
                let i = int_key()?;
                j.as_array()
                    .and_then(|a| a.get(i))
                    .map(|x| Val::Obj(x, t))
                    .ok_or_else(|| format!("index out of range: {i}"))
            }
            (Ty::Any, Value::Array(a)) => {
                let i = int_key()?;
                a.get(i).map(|x| Val::Obj(x, &ANY)).ok_or_else(|| format!("index out of range: {i}"))
            }
            (Ty::Map, _) => {
                let key = str_key()?;
                // Go: the zero value of the element type for a missing key.
                Ok(j.get(&key).map(|x| Val::Obj(x, &STRING)).unwrap_or(Val::Str(String::new())))
            }
            (Ty::Any, Value::Object(o)) => Ok(o.get(&str_key()?).map(|x| Val::Obj(x, &ANY)).unwrap_or(Val::Missing)),
            (Ty::Str(_), Value::String(s)) => {
                let i = int_key()?;
                s.as_bytes().get(i).map(|b| Val::Int(i64::from(*b))).ok_or_else(|| format!("index out of range: {i}"))
            }
            _ => Err(format!("can't index item of type {}", go_name(ty))),
        },
        other => Err(format!("can't index item of type {}", other.type_name())),
    }
}

#[derive(Debug)]
enum Basic {
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Nil,
    Other,
}

impl Exec<'_, '_> {
    /// The comparable form of a value: basic kinds, and the text of Ignite's stringer types.
    fn basic(&self, v: &Val) -> Basic {
        if v.is_nil() {
            return Basic::Nil;
        }
        if let Some(b) = v.bool() {
            return Basic::Bool(b);
        }
        if let Some(i) = v.int() {
            return Basic::Int(i);
        }
        match v {
            Val::Float(x) => Basic::Float(*x),
            Val::Str(s) => Basic::Str(s.clone()),
            Val::Obj(j, Ty::Any) => match j {
                Value::Bool(b) => Basic::Bool(*b),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => Basic::Int(i128::from(i)),
                    None => Basic::Float(n.as_f64().unwrap_or(0.0)),
                },
                Value::String(s) => Basic::Str(s.clone()),
                _ => Basic::Other,
            },
            Val::Obj(_, Ty::List(..) | Ty::Map) => Basic::Other,
            Val::Obj(_, Ty::Struct(s)) if s.stringer.is_none() => Basic::Other,
            Val::Obj(..) => Basic::Str(self.text(v)),
            _ => Basic::Other,
        }
    }

    fn equal(&self, a: &Val, b: &Val) -> Result<bool, String> {
        Ok(match (self.basic(a), self.basic(b)) {
            (Basic::Nil, Basic::Nil) => true,
            (Basic::Nil, _) | (_, Basic::Nil) => false,
            (Basic::Bool(x), Basic::Bool(y)) => x == y,
            (Basic::Int(x), Basic::Int(y)) => x == y,
            (Basic::Float(x), Basic::Float(y)) => x == y,
            (Basic::Int(x), Basic::Float(y)) | (Basic::Float(y), Basic::Int(x)) => x as f64 == y,
            (Basic::Str(x), Basic::Str(y)) => x == y,
            (Basic::Other, _) | (_, Basic::Other) => {
                return Err(format!("non-comparable types {}, {}", a.type_name(), b.type_name()))
            }
            _ => return Err("incompatible types for comparison".into()),
        })
    }

    fn less(&self, a: &Val, b: &Val) -> Result<bool, String> {
        Ok(match (self.basic(a), self.basic(b)) {
            (Basic::Int(x), Basic::Int(y)) => x < y,
            (Basic::Float(x), Basic::Float(y)) => x < y,
            (Basic::Int(x), Basic::Float(y)) => (x as f64) < y,
            (Basic::Float(x), Basic::Int(y)) => x < y as f64,
            (Basic::Str(x), Basic::Str(y)) => x < y,
            (Basic::Bool(_), _) | (Basic::Nil, _) | (Basic::Other, _) => {
                return Err(format!("invalid type for comparison: {}", a.type_name()))
            }
            _ => return Err("incompatible types for comparison".into()),
        })
    }
}

impl<'a> Exec<'a, '_> {
    fn call(&mut self, dot: &Val<'a>, f: Func, c: &Cmd, args: &[Arg], fin: Option<Val<'a>>) -> R<Val<'a>> {
        let at = (c.pos, c.end);
        let nargs = args.len() + usize::from(fin.is_some());
        let arity = |want: &str| format!("wrong number of args for {}: want {want} got {nargs}", f.name());
        if matches!(f, Func::And | Func::Or) {
            if nargs == 0 {
                return fail(c.pos, at, arity("at least 1"));
            }
            // Short-circuit: the first false (and) or true (or) argument, else the last.
            let mut last = Val::Missing;
            for a in args {
                last = self.arg(dot, a)?;
                if truth(&last) == (f == Func::Or) {
                    return Ok(last);
                }
            }
            return Ok(fin.unwrap_or(last));
        }
        let mut vals = Vec::with_capacity(nargs);
        for a in args {
            vals.push(self.arg(dot, a)?);
        }
        vals.extend(fin);
        let want = |n: usize, what: &str| if vals.len() == n { Ok(()) } else { fail(c.pos, at, arity(what)) };
        let e = |msg: String| Fail { pos: c.pos, at, msg: format!("error calling {}: {msg}", f.name()) };
        Ok(match f {
            Func::And | Func::Or => Val::Missing, // answered above
            Func::Not => {
                want(1, "1")?;
                Val::Bool(!truth(&vals[0]))
            }
            Func::Len => {
                want(1, "1")?;
                let n = match &vals[0] {
                    Val::Str(s) => Some(s.len()),
                    Val::Obj(j, Ty::Any | Ty::Str(_) | Ty::List(..) | Ty::Map) => match j {
                        Value::String(s) => Some(s.len()),
                        Value::Array(a) => Some(a.len()),
                        Value::Object(o) => Some(o.len()),
                        Value::Null => Some(0),
                        _ => None,
                    },
                    _ => None,
                };
                match n {
                    Some(n) => Val::Int(n as i64),
                    None => return Err(e(format!("len of type {}", vals[0].type_name()))),
                }
            }
            Func::Index => {
                if vals.is_empty() {
                    return fail(c.pos, at, arity("at least 1"));
                }
                let mut v = vals[0].clone();
                for k in &vals[1..] {
                    v = index_one(&v, k).map_err(e)?;
                }
                v
            }
            Func::Print | Func::Println => {
                let mut s = String::new();
                for (i, v) in vals.iter().enumerate() {
                    let sep = f == Func::Println || (i > 0 && !v.is_string() && !vals[i - 1].is_string());
                    if i > 0 && sep {
                        s.push(' ');
                    }
                    s.push_str(&self.text(&arg_val(v)));
                }
                if f == Func::Println {
                    s.push('\n');
                }
                Val::Str(s)
            }
            Func::Printf => {
                if vals.is_empty() {
                    return fail(c.pos, at, arity("at least 1"));
                }
                let format = match &vals[0] {
                    Val::Str(s) => s.clone(),
                    v if v.is_string() => self.text(v),
                    v => return Err(e(format!("wrong type for value; expected string; got {}", v.type_name()))),
                };
                let rest: Vec<Val> = vals[1..].iter().map(arg_val).collect();
                Val::Str(self.sprintf(&format, &rest).map_err(e)?)
            }
            Func::Eq | Func::Ne => {
                if vals.len() < 2 {
                    return fail(c.pos, at, arity("at least 2"));
                }
                let mut any = false;
                for b in &vals[1..] {
                    if self.equal(&vals[0], b).map_err(e)? {
                        any = true;
                        break;
                    }
                }
                if f == Func::Ne {
                    want(2, "2")?;
                }
                Val::Bool(if f == Func::Eq { any } else { !any })
            }
            Func::Lt | Func::Le | Func::Gt | Func::Ge => {
                want(2, "2")?;
                let (a, b) = (&vals[0], &vals[1]);
                let r = match f {
                    Func::Lt => self.less(a, b).map_err(e)?,
                    Func::Le => self.less(a, b).map_err(e)? || self.equal(a, b).map_err(e)?,
                    Func::Gt => !self.less(a, b).map_err(e)? && !self.equal(a, b).map_err(e)?,
                    _ => !self.less(a, b).map_err(e)?,
                };
                Val::Bool(r)
            }
            Func::Json => {
                want(1, "1")?;
                Val::Str(serde_json::to_string(&vals[0].json()).map_err(|x| e(x.to_string()))?)
            }
            Func::Upper | Func::Lower => {
                want(1, "1")?;
                let t = self.text(&vals[0]);
                Val::Str(if f == Func::Upper { t.to_uppercase() } else { t.to_lowercase() })
            }
            Func::Join => {
                want(2, "2")?;
                let sep = self.text(&vals[1]);
                let items: Vec<String> = match &vals[0] {
                    Val::Obj(Value::Array(a), Ty::List(t, ..)) => a.iter().map(|x| obj_text(x, t)).collect(),
                    Val::Obj(Value::Array(a), Ty::Any) => a.iter().map(|x| go_string(Some(x))).collect(),
                    Val::Obj(Value::Null, Ty::List(..)) => vec![],
                    v => return Err(e(format!("join of type {}", v.type_name()))),
                };
                Val::Str(items.join(&sep))
            }
        })
    }
}

/// What a function receives for an argument: Go passes a missing value as nil.
fn arg_val<'a>(v: &Val<'a>) -> Val<'a> {
    match v {
        Val::Missing => Val::Nil,
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// printf.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Spec {
    minus: bool,
    plus: bool,
    sharp: bool,
    space: bool,
    zero: bool,
    width: Option<usize>,
    prec: Option<usize>,
}

impl Exec<'_, '_> {
    /// Go's `fmt.Sprintf` for the verbs `%v %s %q %d %t %x %X %o %b %c %f %e %g %%`, flags,
    /// widths and precisions.
    fn sprintf(&self, format: &str, args: &[Val]) -> Result<String, String> {
        let mut out = String::new();
        let mut next = 0;
        let mut chars = format.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let mut spec = Spec::default();
            while let Some(&fl) = chars.peek() {
                match fl {
                    '-' => spec.minus = true,
                    '+' => spec.plus = true,
                    '#' => spec.sharp = true,
                    ' ' => spec.space = true,
                    '0' => spec.zero = true,
                    _ => break,
                }
                chars.next();
            }
            fn num(chars: &mut std::iter::Peekable<std::str::Chars>) -> Option<usize> {
                let mut n: Option<usize> = None;
                while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                    n = Some(n.unwrap_or(0).saturating_mul(10).saturating_add(d as usize));
                    chars.next();
                }
                n
            }
            spec.width = num(&mut chars);
            if chars.peek() == Some(&'.') {
                chars.next();
                spec.prec = Some(num(&mut chars).unwrap_or(0));
            }
            if spec.width.unwrap_or(0) > MAX_WIDTH || spec.prec.unwrap_or(0) > MAX_WIDTH {
                return Err(format!("printf width or precision larger than {MAX_WIDTH}"));
            }
            let Some(verb) = chars.next() else {
                out.push_str("%!(NOVERB)");
                break;
            };
            if verb == '%' {
                out.push('%');
                continue;
            }
            let Some(arg) = args.get(next) else {
                let _ = write!(out, "%!{verb}(MISSING)");
                continue;
            };
            next += 1;
            out.push_str(&self.fmt_one(verb, &spec, arg));
        }
        if next < args.len() {
            let extra: Vec<String> =
                args[next..].iter().map(|a| format!("{}={}", a.type_name(), self.text(a))).collect();
            let _ = write!(out, "%!(EXTRA {})", extra.join(", "));
        }
        Ok(out)
    }

    fn fmt_one(&self, verb: char, spec: &Spec, arg: &Val) -> String {
        let bad = || format!("%!{verb}({}={})", arg.type_name(), self.text(arg));
        let numeric =
            matches!(arg, Val::Int(_) | Val::Float(_) | Val::Bool(_)) || arg.int().is_some() || arg.bool().is_some();
        let signed = |s: String, neg: bool| -> (String, String) {
            let sign = if neg {
                "-"
            } else if spec.plus {
                "+"
            } else if spec.space {
                " "
            } else {
                ""
            };
            (sign.to_string(), s)
        };
        let (sign, body, num) = match verb {
            'v' => (String::new(), self.text(arg), false),
            's' => {
                if numeric && !arg.is_string() {
                    return bad();
                }
                let t = self.text(arg);
                let t = match spec.prec {
                    Some(p) => t.chars().take(p).collect(),
                    None => t,
                };
                (String::new(), t, false)
            }
            'q' => match (arg.is_string() || matches!(arg, Val::Obj(_, Ty::ImageRef)), arg.int()) {
                (true, _) => (String::new(), go_quote(&self.text(arg)), false),
                (false, Some(i)) => match u32::try_from(i).ok().and_then(char::from_u32) {
                    Some(ch) => {
                        let q = go_quote(&ch.to_string());
                        (
                            String::new(),
                            format!("'{}'", &q[1..q.len() - 1].replace("\\\"", "\"").replace('\'', "\\'")),
                            false,
                        )
                    }
                    None => return bad(),
                },
                _ => return bad(),
            },
            't' => match arg.bool() {
                Some(b) => (String::new(), b.to_string(), false),
                None => return bad(),
            },
            'd' | 'b' | 'o' | 'x' | 'X' | 'c' => match arg.int() {
                Some(i) => {
                    let a = i.unsigned_abs();
                    let s = match verb {
                        'd' => a.to_string(),
                        'b' => format!("{a:b}"),
                        'o' => format!("{}{a:o}", if spec.sharp { "0" } else { "" }),
                        'x' => format!("{}{a:x}", if spec.sharp { "0x" } else { "" }),
                        'X' => format!("{}{a:X}", if spec.sharp { "0X" } else { "" }),
                        _ => match u32::try_from(i).ok().and_then(char::from_u32) {
                            Some(ch) => return pad(String::new(), ch.to_string(), spec, false),
                            None => return bad(),
                        },
                    };
                    let (sg, b) = signed(s, i < 0);
                    (sg, b, true)
                }
                None if matches!(verb, 'x' | 'X') && arg.is_string() => {
                    let t = self.text(arg);
                    let h: String = t.bytes().map(|b| format!("{b:02x}")).collect();
                    (String::new(), if verb == 'X' { h.to_uppercase() } else { h }, false)
                }
                None => return bad(),
            },
            'e' | 'E' | 'f' | 'F' | 'g' | 'G' => match arg {
                Val::Float(x) => {
                    let a = x.abs();
                    let s = match verb {
                        'f' | 'F' => format!("{:.*}", spec.prec.unwrap_or(6), a),
                        'e' | 'E' => {
                            let r = format!("{:.*e}", spec.prec.unwrap_or(6), a);
                            let (m, ex) = r.split_once('e').unwrap_or((&r, "0"));
                            let ex: i32 = ex.parse().unwrap_or(0);
                            let s = format!("{m}e{}{:02}", if ex < 0 { '-' } else { '+' }, ex.abs());
                            if verb == 'E' {
                                s.to_uppercase()
                            } else {
                                s
                            }
                        }
                        _ => {
                            let s = go_float(a);
                            if verb == 'G' {
                                s.to_uppercase()
                            } else {
                                s
                            }
                        }
                    };
                    let (sg, b) = signed(s, x.is_sign_negative() && *x != 0.0);
                    (sg, b, true)
                }
                _ => return bad(),
            },
            _ => return bad(),
        };
        pad(sign, body, spec, num)
    }
}

fn pad(sign: String, body: String, spec: &Spec, numeric: bool) -> String {
    let len = sign.chars().count() + body.chars().count();
    let width = spec.width.unwrap_or(0);
    if len >= width {
        return sign + &body;
    }
    let fill = width - len;
    if spec.minus {
        format!("{sign}{body}{}", " ".repeat(fill))
    } else if spec.zero && numeric {
        format!("{sign}{}{body}", "0".repeat(fill))
    } else {
        format!("{}{sign}{body}", " ".repeat(fill))
    }
}

// ---------------------------------------------------------------------------------------------
// Static check: fields of the object type that do not exist, before any object is seen.
// ---------------------------------------------------------------------------------------------

struct Checker<'s> {
    src: &'s str,
    root: &'static Ty,
}

impl Checker<'_> {
    /// The type a chain of steps leads to: `Ok(None)` when it cannot be known statically.
    fn steps(&self, mut ty: &'static Ty, steps: &[Step]) -> Result<Option<&'static Ty>, String> {
        for s in steps {
            while let Ty::Ptr(t) = ty {
                ty = t;
            }
            ty = match (s, ty) {
                (_, Ty::Any | Ty::Map) => return Ok(None),
                (Step::Field(n), Ty::Struct(st)) => match find_field(st, n) {
                    Some(path) => path[path.len() - 1].ty,
                    None => return Err(format!("can't evaluate field {n} in type {}", st.name)),
                },
                (Step::Field(n), Ty::Time) if n.eq_ignore_ascii_case("Time") => &META_TIME,
                (Step::Field(n), Ty::GoTime("v1.Time")) if n.eq_ignore_ascii_case("Time") => &GO_TIME,
                (Step::Field(n), Ty::Ssh) if n.eq_ignore_ascii_case("Generate") => &BOOL,
                (Step::Field(n), Ty::Ssh) if n.eq_ignore_ascii_case("PublicKey") => &STRING,
                (Step::Field(n), Ty::Ssh) => return Err(format!("can't evaluate field {n} in type v1alpha4.SSH")),
                (Step::Field(n), t) => return Err(format!("can't evaluate field {n} in type {}", go_name(t))),
                (Step::Index(_), Ty::List(e, ..)) => e,
                (Step::Index(_), t) => return Err(format!("can't index item of type {}", go_name(t))),
            };
        }
        Ok(Some(ty))
    }

    fn err(&self, a: &Arg, msg: String) -> TemplateError {
        let ex = Exec { src: self.src, vars: vec![], out: String::new(), steps: 0 };
        ex.to_error(Fail { pos: a.pos, at: (a.start, a.end), msg })
    }

    /// The static type of a pipeline that is one field chain.
    fn pipe_ty(&self, p: &Pipe, dot: Option<&'static Ty>) -> Option<&'static Ty> {
        let [c] = &p.cmds[..] else { return None };
        let [a] = &c.args[..] else { return None };
        match &a.kind {
            ArgKind::Field(s) => self.steps(dot?, s).ok().flatten(),
            ArgKind::Var(v, s) if v == "$" => self.steps(self.root, s).ok().flatten(),
            _ => None,
        }
    }

    fn pipe(&self, p: &Pipe, dot: Option<&'static Ty>) -> Result<(), TemplateError> {
        for c in &p.cmds {
            for a in &c.args {
                match &a.kind {
                    ArgKind::Field(s) => {
                        if let Some(d) = dot {
                            self.steps(d, s).map_err(|m| self.err(a, m))?;
                        }
                    }
                    ArgKind::Var(v, s) if v == "$" => {
                        self.steps(self.root, s).map_err(|m| self.err(a, m))?;
                    }
                    ArgKind::Chain(p, _) | ArgKind::Pipe(p) => self.pipe(p, dot)?,
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn nodes(&self, nodes: &[Node], dot: Option<&'static Ty>) -> Result<(), TemplateError> {
        for n in nodes {
            match n {
                Node::Text(_) | Node::Break | Node::Continue => {}
                Node::Action(p) => self.pipe(p, dot)?,
                Node::If { pipe, then, els } => {
                    self.pipe(pipe, dot)?;
                    self.nodes(then, dot)?;
                    self.nodes(els, dot)?;
                }
                Node::With { pipe, then, els } => {
                    self.pipe(pipe, dot)?;
                    self.nodes(then, self.pipe_ty(pipe, dot))?;
                    self.nodes(els, dot)?;
                }
                Node::Range { pipe, body, els } => {
                    self.pipe(pipe, dot)?;
                    let elem = match self.pipe_ty(pipe, dot) {
                        Some(Ty::List(e, ..)) => Some(*e),
                        Some(Ty::Map) => Some(&STRING),
                        _ => None,
                    };
                    self.nodes(body, elem)?;
                    self.nodes(els, dot)?;
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// JSONPath (kubectl's form), as before.
// ---------------------------------------------------------------------------------------------

/// A compiled JSONPath: segments, each a field name or an index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Field(String),
    Index(usize),
}

fn bad_path(p: &str) -> TemplateError {
    TemplateError::Parse(format!("invalid JSONPath {p:?}: expected a path such as .spec.cpus"))
}

fn parse_path(p: &str) -> Result<Vec<Seg>, TemplateError> {
    let p = p.trim();
    let body = p.strip_prefix('.').ok_or_else(|| bad_path(p))?;
    if body.is_empty() {
        return Ok(vec![]);
    }
    let mut segs = Vec::new();
    for part in body.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() && rest.is_empty() {
            return Err(bad_path(p));
        }
        if !name.is_empty() {
            if !name.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-') {
                return Err(bad_path(p));
            }
            segs.push(Seg::Field(name.to_string()));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let (idx, after) = r.split_once(']').ok_or_else(|| bad_path(p))?;
            segs.push(Seg::Index(idx.parse().map_err(|_| bad_path(p))?));
            rest = after;
        }
        if !rest.is_empty() {
            return Err(bad_path(p));
        }
    }
    Ok(segs)
}

fn json_field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    obj.get(name).or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, x)| x))
}

/// Resolves a JSONPath; `None` when a field is absent.
fn resolve<'a>(root: &'a Value, segs: &[Seg]) -> Option<&'a Value> {
    let mut cur = root;
    for s in segs {
        cur = match s {
            Seg::Index(n) => cur.as_array()?.get(*n)?,
            Seg::Field(name) => json_field(cur, name)?,
        };
    }
    Some(cur)
}

#[derive(Debug)]
enum Piece {
    Text(String),
    Path(Vec<Seg>),
}

// ---------------------------------------------------------------------------------------------
// The API: templates and filters.
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
enum Compiled {
    Go { src: String, nodes: Vec<Node> },
    JsonPath(Vec<Piece>),
}

/// A compiled output template.
#[derive(Debug)]
pub struct Template(Compiled);

impl Template {
    /// Compiles a Go template, or a whole `{.json.path}` / `jsonpath={...}`.
    pub fn parse(src: &str) -> Result<Template, TemplateError> {
        if src.len() > MAX_LEN {
            return Err(too_long(src.len()));
        }
        let s = src.strip_prefix("jsonpath=").unwrap_or(src);
        if s.starts_with('{') && !s.starts_with("{{") {
            let mut pieces = Vec::new();
            let mut rest = s;
            while let Some(start) = rest.find('{') {
                if start > 0 {
                    pieces.push(Piece::Text(rest[..start].to_string()));
                }
                let end = rest[start..]
                    .find('}')
                    .ok_or_else(|| TemplateError::Parse(format!("invalid JSONPath {src:?}: unterminated {{")))?;
                pieces.push(Piece::Path(parse_path(&rest[start + 1..start + end])?));
                rest = &rest[start + end + 1..];
            }
            if !rest.is_empty() {
                pieces.push(Piece::Text(rest.to_string()));
            }
            return Ok(Template(Compiled::JsonPath(pieces)));
        }
        Ok(Template(Compiled::Go { src: src.to_string(), nodes: parse(src)? }))
    }

    /// Refuses fields that objects of `kind` (`VM`, `Image`, `Kernel`) cannot have, before any
    /// object is rendered (so that a bad template fails even when no object matches).
    pub fn check(&self, kind: &str) -> Result<(), TemplateError> {
        let Compiled::Go { src, nodes } = &self.0 else { return Ok(()) };
        let root = root_ty(&serde_json::json!({ "kind": kind }));
        let c = Checker { src, root };
        c.nodes(nodes, Some(root))
    }

    /// Renders the template over an object's JSON.
    pub fn render(&self, v: &Value) -> Result<String, TemplateError> {
        match &self.0 {
            Compiled::JsonPath(pieces) => Ok(pieces
                .iter()
                .map(|p| match p {
                    Piece::Text(t) => t.clone(),
                    Piece::Path(segs) => go_string(resolve(v, segs)),
                })
                .collect()),
            Compiled::Go { src, nodes } => {
                let root = Val::Obj(v, root_ty(v));
                let mut ex = Exec { src, vars: vec![("$".into(), root.clone())], out: String::new(), steps: 0 };
                match ex.nodes(&root, nodes) {
                    Ok(_) if ex.out.len() > MAX_OUTPUT => {
                        Err(TemplateError::Exec(format!("template output exceeded {MAX_OUTPUT} bytes")))
                    }
                    Ok(_) => Ok(ex.out),
                    Err(f) => Err(ex.to_error(f)),
                }
            }
        }
    }
}

fn too_long(len: usize) -> TemplateError {
    TemplateError::Parse(format!("template is {len} bytes long: templates are limited to {MAX_LEN}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Contains,
    NotContains,
}

/// A conjunction of `FIELD op VALUE` terms, comma separated.
#[derive(Debug)]
pub struct Filter(Vec<(Template, Op, String)>);

impl Filter {
    pub fn parse(src: &str) -> Result<Filter, TemplateError> {
        let mut terms = Vec::new();
        for term in src.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (lhs, op, rhs) = split_op(term).ok_or_else(|| TemplateError::BadFilter(term.into()))?;
            let lhs = lhs.trim();
            let tmpl = if lhs.starts_with("{{") {
                lhs.to_string()
            } else if lhs.starts_with('.') {
                format!("{{{{{lhs}}}}}")
            } else {
                format!("{{{{.{lhs}}}}}")
            };
            let t = match Template::parse(&tmpl) {
                Ok(t @ Template(Compiled::Go { .. })) => t,
                _ => return Err(TemplateError::BadFilter(term.into())),
            };
            terms.push((t, op, rhs.to_string()));
        }
        Ok(Filter(terms))
    }

    /// See [`Template::check`].
    pub fn check(&self, kind: &str) -> Result<(), TemplateError> {
        self.0.iter().try_for_each(|(t, _, _)| t.check(kind))
    }

    pub fn matches(&self, v: &Value) -> Result<bool, TemplateError> {
        for (t, op, want) in &self.0 {
            let got = t.render(v)?;
            let ok = match op {
                Op::Eq => &got == want,
                Op::Ne => &got != want,
                Op::Contains => got.contains(want.as_str()),
                Op::NotContains => !got.contains(want.as_str()),
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn split_op(term: &str) -> Option<(&str, Op, &str)> {
    // Skip past a `{{...}}` so operators inside it are not seen.
    let from = term.find("}}").map(|i| i + 2).unwrap_or(0);
    let t = &term[from..];
    for (tok, op) in [("!=", Op::Ne), ("=~", Op::Contains), ("!~", Op::NotContains), ("==", Op::Eq), ("=", Op::Eq)] {
        if let Some(i) = t.find(tok) {
            return Some((&term[..from + i], op, &term[from + i + tok.len()..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// A VM as `serde_json::to_value(&vm)` writes it.
    fn vm() -> Value {
        json!({"apiVersion": "ignite.weave.works/v1alpha4", "kind": "VM",
               "metadata": {"name": "my-vm", "uid": "e04128e6f96176a8", "created": "2024-05-01T10:00:00.12Z",
                            "labels": {"app": "web", "tier": "front"}},
               "spec": {"image": {"oci": "weaveworks/ignite-ubuntu:latest"},
                        "kernel": {"oci": "weaveworks/ignite-kernel:5.10.51", "cmdLine": "console=ttyS0"},
                        "cpus": 2, "memory": "512MB", "diskSize": "4GB",
                        "network": {"ports": [{"hostPort": 8080, "vmPort": 80, "protocol": "tcp"},
                                              {"bindAddress": "127.0.0.1", "hostPort": 53, "vmPort": 53, "protocol": "udp"}]},
                        "copyFiles": [{"hostPath": "/a", "vmPath": "/b"}],
                        "ssh": true},
               "status": {"running": true, "runtime": {"id": "x", "name": "qemu", "pid": 42},
                          "startTime": "2024-05-01T11:00:00Z",
                          "network": {"plugin": "cni", "ipAddresses": ["10.61.0.2", "10.61.0.3"]},
                          "image": {"id": "sha256:abc", "size": "100MB"}, "kernel": {}, "idPrefix": "ignite"}})
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-05-01T12:00:00.12Z").unwrap().with_timezone(&Utc)
    }

    fn render(t: &str, v: &Value) -> Result<String, TemplateError> {
        Template::parse(t)?.render(v)
    }

    fn r(t: &str) -> String {
        render(t, &vm()).unwrap_or_else(|e| panic!("{t}: {e}"))
    }

    fn exec_err(t: &str) -> String {
        match render(t, &vm()) {
            Err(TemplateError::Exec(m)) => m,
            other => panic!("{t}: expected an execution error, got {other:?}"),
        }
    }

    fn parse_error(t: &str) -> String {
        match Template::parse(t) {
            Err(TemplateError::Parse(m)) => m,
            other => panic!("{t}: expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn go_paths() {
        assert_eq!(r("{{.ObjectMeta.Name}}"), "my-vm");
        assert_eq!(r("{{.Name}}"), "my-vm");
        assert_eq!(r("{{.metadata.name}}"), "my-vm");
        assert_eq!(r("{{.UID}} {{.ObjectMeta.UID}}"), "e04128e6f96176a8 e04128e6f96176a8");
        assert_eq!(
            r("{{.Kind}} {{.TypeMeta.APIVersion}} {{.apiVersion}}"),
            "VM ignite.weave.works/v1alpha4 ignite.weave.works/v1alpha4"
        );
        assert_eq!(r("{{.Spec.CPUs}} {{.spec.cpus}}"), "2 2");
        assert_eq!(r("{{.Spec.Image.OCI}}"), "weaveworks/ignite-ubuntu:latest");
        assert_eq!(r("{{.Status.Runtime.Name}} {{.Status.Runtime.Pid}} {{.Status.Network.Plugin}}"), "qemu 42 cni");
        assert_eq!(r("{{.Status.Network.IPAddresses[1]}}"), "10.61.0.3");
        assert_eq!(r("ip={{.Status.Network.IPAddresses[1]}}\\n"), "ip=10.61.0.3\n");
        assert_eq!(r("{{.Spec.Network.Ports[0].HostPort}}"), "8080");
        assert_eq!(r("{{.Labels.app}} {{.ObjectMeta.Labels.tier}}"), "web front");
        assert_eq!(r("{{.Spec.Kernel}}"), "{weaveworks/ignite-kernel:5.10.51 console=ttyS0}");
    }

    #[test]
    fn text_forms() {
        // Sizes: datasize's HumanReadable (the largest unit strictly exceeded).
        assert_eq!(r("{{.Spec.Memory}} {{.Spec.DiskSize}} {{.Status.Image.Size}}"), "512.0 MB 4.0 GB 100.0 MB");
        let mut v = vm();
        v["spec"]["memory"] = json!("1GB");
        v["spec"]["diskSize"] = json!("1536MB");
        assert_eq!(
            render("{{.Spec.Memory}} {{.Spec.DiskSize}} {{.Status.Kernel.Size}}", &v).unwrap(),
            "1024.0 MB 1.5 GB 0 B"
        );
        // Ports and IP lists: Ignite's String() of PortMappings and IPAddresses.
        assert_eq!(r("{{.Spec.Network.Ports}}"), "0.0.0.0:8080->80/tcp, 127.0.0.1:53->53/udp");
        assert_eq!(r("{{index .Spec.Network.Ports 1}}"), "127.0.0.1:53->53/udp");
        assert_eq!(r("{{.Status.Network.IPAddresses}}"), "10.61.0.2, 10.61.0.3");
        assert_eq!(r("{{.Status.IPAddresses}}"), "10.61.0.2, 10.61.0.3");
        assert_eq!(r("{{.Spec.Network}}"), "{0.0.0.0:8080->80/tcp, 127.0.0.1:53->53/udp}");
        // Other slices, maps, structs.
        assert_eq!(r("{{.Spec.CopyFiles}}"), "[{/a /b}]");
        assert_eq!(r("{{.Spec.Storage.Volumes}}"), "[]");
        assert_eq!(r("{{.Labels}}"), "map[app:web tier:front]");
        assert_eq!(r("{{.Annotations}}"), "map[]");
        assert_eq!(r("{{.Status.Image}}"), "{sha256:abc 100.0 MB}");
        assert_eq!(r("{{.Status.Kernel.ID}}"), "<nil>");
        // Times: Go's time.Time form (also under .Time, as Ignite's runtime.Time embeds it).
        assert_eq!(
            r("{{.Created}}|{{.Status.StartTime}}"),
            "2024-05-01 10:00:00.12 +0000 UTC|2024-05-01 11:00:00 +0000 UTC"
        );
        assert_eq!(r("{{.Created.Time}}"), "2024-05-01 10:00:00.12 +0000 UTC");
        assert_eq!(r("{{.Status.StartTime.Time.Time}}"), "2024-05-01 11:00:00 +0000 UTC");
        assert_eq!(r("{{.Status.Exit.Time}}"), "<nil>");
        // Booleans, SSH, absent fields as Go zero values.
        assert_eq!(r("{{.Status.Running}} {{.Spec.SSH}} {{.Spec.SSH.Generate}}"), "true {true } true");
        v["spec"]["ssh"] = json!("/k.pub");
        assert_eq!(render("{{.Spec.SSH}} {{.Spec.SSH.PublicKey}}", &v).unwrap(), "{false /k.pub} /k.pub");
        v["spec"].as_object_mut().unwrap().remove("ssh");
        assert_eq!(
            render("{{.Spec.SSH}} {{.Spec.Sandbox.OCI}}|{{.Spec.VMM}}|{{.Spec.Agent}}", &v).unwrap(),
            "<nil> ||<nil>"
        );
        assert_eq!(r("{{.Status.Exit.Reason}}|{{.Status.Exit.Code}}"), "|<nil>");
        assert_eq!(render("{{.Status.StartTime}}", &json!({"kind": "VM"})).unwrap(), "<nil>");
        assert_eq!(render("{{.Created}}", &json!({"kind": "VM"})).unwrap(), "0001-01-01 00:00:00 +0000 UTC");
        assert_eq!(render("{{.Spec.Memory}}", &json!({"kind": "VM"})).unwrap(), "0 B");
    }

    #[test]
    fn images_kernels_and_unknown_kinds() {
        let img = json!({"kind": "Image", "metadata": {"name": "busybox"}, "spec": {"oci": "busybox:latest"},
                         "status": {"ociSource": {"id": "sha256:1", "size": "4MB"}}});
        assert_eq!(
            render("{{.Spec.OCI}} {{.Status.OCISource.Size}} {{.Status.OCISource.ID}}", &img).unwrap(),
            "busybox:latest 4.0 MB sha256:1"
        );
        let k = json!({"kind": "Kernel", "metadata": {"name": "k"}, "status": {"version": "6.1.0"}});
        assert_eq!(render("{{.Name}} {{.Status.Version}}", &k).unwrap(), "k 6.1.0");
        assert!(render("{{.Status.Nope}}", &k).unwrap_err().to_string().contains("Nope in type v1alpha4.KernelStatus"));
        // A snapshot's metadata reads as every object's; its spec and status are untyped.
        let snap = json!({"kind": "Snapshot", "metadata": {"name": "s", "uid": "0123456789abcdef"},
                          "spec": {"vmName": "src"}, "status": {"pausedMs": 130}});
        assert_eq!(
            render("{{.Name}} {{.UID}} {{.Spec.VmName}} {{.Status.PausedMs}} {{.Status.nope}}", &snap).unwrap(),
            "s 0123456789abcdef src 130 <no value>"
        );
        let other = json!({"a": {"b": [1, 2]}});
        assert_eq!(render("{{.A.B}} {{.a.c}}", &other).unwrap(), "[1 2] <no value>");
    }

    #[test]
    fn actions() {
        assert_eq!(r("{{range .Status.Network.IPAddresses}}{{.}} {{end}}"), "10.61.0.2 10.61.0.3 ");
        assert_eq!(
            r("{{range $i, $e := .Status.Network.IPAddresses}}{{$i}}={{$e}};{{end}}"),
            "0=10.61.0.2;1=10.61.0.3;"
        );
        assert_eq!(r("{{range $e := .Spec.Network.Ports}}{{$e.VMPort}}/{{.Protocol}} {{end}}"), "80/tcp 53/udp ");
        assert_eq!(r("{{range $k, $v := .Labels}}{{$k}}={{$v}},{{end}}"), "app=web,tier=front,");
        assert_eq!(r("{{range .Spec.Storage.Volumes}}x{{else}}none{{end}}"), "none");
        assert_eq!(r("{{range 3}}{{.}}{{end}}"), "012");
        assert_eq!(
            r("{{range .Status.Network.IPAddresses}}{{if eq . \"10.61.0.2\"}}{{continue}}{{end}}{{.}}{{break}}{{end}}"),
            "10.61.0.3"
        );
        assert_eq!(r("{{if .Status.Running}}up{{else}}down{{end}}"), "up");
        assert_eq!(r("{{if not .Status.Running}}down{{else if gt .Spec.CPUs 1}}big{{else}}small{{end}}"), "big");
        assert_eq!(r("{{if .Spec.Storage.Volumes}}v{{else if .Labels.nope}}l{{else}}none{{end}}"), "none");
        assert_eq!(r("{{with .Status.Runtime}}{{.Name}}:{{.PID}}{{end}}"), "qemu:42");
        assert_eq!(r("{{with .Spec.Sandbox.OCI}}{{.}}{{else}}no sandbox{{end}}"), "no sandbox");
        assert_eq!(r("{{with .Labels.nope}}x{{else with .Labels.app}}{{.}}{{end}}"), "web");
        assert_eq!(
            r("{{$n := .Name}}{{range .Status.Network.IPAddresses}}{{$n}}@{{.}} {{end}}"),
            "my-vm@10.61.0.2 my-vm@10.61.0.3 "
        );
        assert_eq!(r("{{range .Spec.Network.Ports}}{{$.Name}}:{{.HostPort}} {{end}}"), "my-vm:8080 my-vm:53 ");
        assert_eq!(r("{{$x := 1}}{{if true}}{{$x = 2}}{{end}}{{$x}}"), "2");
        assert_eq!(r("{{.Name | printf \"%s!\" | upper}}"), "MY-VM!");
        assert_eq!(r("{{(index .Spec.Network.Ports 1).BindAddress}}"), "127.0.0.1");
        assert_eq!(r("a {{/* a comment */}}b"), "a b");
        assert_eq!(r("a  {{- /* trimmed */ -}}  b"), "ab");
        assert_eq!(r("{{.Name}}\n  {{- .UID -}}\n  !"), "my-vme04128e6f96176a8!");
        assert_eq!(
            r("{{\"quoted\\t\\\"x\\\"\"}} {{`raw\\n`}} {{'a'}} {{1.5}} {{-3}} {{0x10}} {{true}} {{print nil}}"),
            "quoted\t\"x\" raw\\n 97 1.5 -3 16 true <nil>"
        );
    }

    #[test]
    fn functions() {
        assert_eq!(
            r("{{index .ObjectMeta.Labels \"app\"}}|{{index .Labels \"nope\"}}|{{.Labels.nope}}"),
            "web||<no value>"
        );
        assert_eq!(
            r("{{index .Status.Network.IPAddresses 0}} {{index .Spec.Network.Ports 0 | json}}"),
            "10.61.0.2 {\"hostPort\":8080,\"protocol\":\"tcp\",\"vmPort\":80}"
        );
        assert_eq!(
            r("{{len .Status.Network.IPAddresses}} {{len .Labels}} {{len .Name}} {{len .Spec.Storage.Volumes}}"),
            "2 2 5 0"
        );
        assert_eq!(
            r("{{json .Spec.Memory}} {{json .Spec.CPUs}} {{json .Status.Running}} {{json .Labels}}"),
            "\"512MB\" 2 true {\"app\":\"web\",\"tier\":\"front\"}"
        );
        assert_eq!(r("{{.Spec.Network.Ports | json}}"), "[{\"hostPort\":8080,\"protocol\":\"tcp\",\"vmPort\":80},{\"bindAddress\":\"127.0.0.1\",\"hostPort\":53,\"protocol\":\"udp\",\"vmPort\":53}]");
        assert_eq!(r("{{json .Spec.Storage}} {{json .Labels.nope}}"), "null null");
        assert_eq!(
            r("{{printf \"%s has %d CPUs, %v, %q, %t\" .Name .Spec.CPUs .Spec.Memory .Name .Status.Running}}"),
            "my-vm has 2 CPUs, 512.0 MB, \"my-vm\", true"
        );
        assert_eq!(
            r("[{{printf \"%-8s|%8s|%05d|%x|%X|%o|%b|%c|%+d\" .Name .Name 42 255 255 8 5 65 3}}]"),
            "[my-vm   |   my-vm|00042|ff|FF|10|101|A|+3]"
        );
        assert_eq!(
            r("{{printf \"%.2f %e %g %v %.3s %%\" 3.14159 1500.0 0.5 1e6 \"abcdef\"}}"),
            "3.14 1.500000e+03 0.5 1e+06 abc %"
        );
        assert_eq!(r("{{printf \"%d %s\" \"x\"}}"), "%!d(string=x) %!s(MISSING)");
        assert_eq!(r("{{printf \"%d\" 1 2}}"), "1%!(EXTRA int=2)");
        assert_eq!(r("{{print .Name 1 2 \"x\" .Spec.CPUs}}"), "my-vm1 2x2");
        assert_eq!(r("{{println .Name 1}}"), "my-vm 1\n");
        assert_eq!(r("{{eq .Spec.CPUs 2}} {{ne .Name \"x\"}} {{eq .Name \"a\" \"my-vm\"}} {{lt 1 2}} {{le 2 2}} {{gt .Spec.CPUs 3}} {{ge \"b\" \"a\"}}"), "true true true true true false true");
        assert_eq!(r("{{eq .Spec.Memory \"512.0 MB\"}} {{eq .Spec.Image.OCI \"weaveworks/ignite-ubuntu:latest\"}} {{eq .Status.StartTime nil}} {{eq .Status.Exit.Code nil}}"), "true true false true");
        assert_eq!(r("{{and 1 0 2}} {{and 1 2}} {{or 0 \"\" .Name}} {{or 0 false}} {{not .Labels}} {{and .Status.Running .Spec.SSH}}"), "0 2 my-vm false false {true }");
        assert_eq!(r("{{upper .Name}} {{lower \"ABC\"}} {{join .Status.Network.IPAddresses \",\"}} {{join .Spec.Network.Ports \" \"}}"), "MY-VM abc 10.61.0.2,10.61.0.3 0.0.0.0:8080->80/tcp 127.0.0.1:53->53/udp");
    }

    #[test]
    fn errors_as_go_gives_them() {
        // A struct field that does not exist names the field; a missing map key does not fail.
        assert_eq!(
            exec_err("{{.Spec.Nope}}"),
            "template: :1:7: executing \"\" at <.Spec.Nope>: can't evaluate field Nope in type v1alpha4.VMSpec"
        );
        assert_eq!(
            exec_err("x\n {{.Nope}}"),
            "template: :2:3: executing \"\" at <.Nope>: can't evaluate field Nope in type v1alpha4.VM"
        );
        assert!(exec_err("{{.Name.First}}").ends_with("can't evaluate field First in type string"));
        assert!(exec_err("{{.Spec.Memory.Bytes}}").ends_with("can't evaluate field Bytes in type v1alpha1.Size"));
        assert!(exec_err("{{range .Spec.Network.Ports}}{{.Nope}}{{end}}")
            .ends_with("can't evaluate field Nope in type v1alpha1.PortMapping"));
        assert!(exec_err("{{.Status.StartTime.Time.Nope}}").contains("field Nope in type v1.Time"));
        assert!(exec_err("{{.Created.Time.Time.Nope}}").contains("field Nope in type time.Time"));
        assert_eq!(render("{{.Status.Exit.Code.X}}", &vm()).unwrap_err().to_string(), "failed rendering template: template: :1:9: executing \"\" at <.Status.Exit.Code.X>: nil pointer evaluating *int32.X");
        assert!(
            exec_err("{{index .Status.Network.IPAddresses 5}}").ends_with("error calling index: index out of range: 5")
        );
        assert!(exec_err("{{.Status.Network.IPAddresses[5]}}").ends_with("index out of range: 5"));
        assert!(exec_err("{{len .Spec.CPUs}}").contains("len of type uint64"));
        assert!(exec_err("{{lt .Spec.CPUs \"a\"}}").contains("incompatible types for comparison"));
        assert!(exec_err("{{eq .Labels .Labels}}").contains("non-comparable"));
        assert!(exec_err("{{not 1 2}}").contains("wrong number of args for not: want 1 got 2"));
        assert!(exec_err("{{range .Name}}{{end}}").contains("range can't iterate over my-vm"));
        assert!(exec_err("{{.Name | .UID}}").contains("can't give argument to non-function .UID"));
        // Parse errors, as Go words them.
        for (t, want) in [
            ("{{.Spec", "template: :1: unclosed action"),
            ("{{if .X}}a", "template: :1: unexpected EOF"),
            ("a{{end}}", "unexpected {{end}}"),
            ("{{else}}", "unexpected {{else}}"),
            ("{{$x}}", "undefined variable \"$x\""),
            ("{{if 1}}{{$x := 1}}{{end}}{{$x}}", "undefined variable \"$x\""),
            ("{{nope .X}}", "function \"nope\" not defined"),
            ("{{Spec}}", "function \"Spec\" not defined"),
            ("{{\"abc}}", "unterminated quoted string"),
            ("{{1x}}", "bad number syntax"),
            ("{{/* x }}", "unclosed comment"),
            ("{{.X .Y}}", "can't give argument to non-function .X"),
            ("{{nil}}", "nil is not a command"),
            ("{{.X | 1}}", "non executable command in pipeline stage 2"),
            ("{{break}}", "{{break}} outside {{range}}"),
            ("{{define \"x\"}}{{end}}", "{{define}} is not supported"),
            ("{{(.X}}", "unclosed left paren"),
            ("{{}}", "missing value for command"),
            ("{{range .X}}{{else if .Y}}{{end}}", "unexpected {{else}} form"),
            ("{{.X#}}", "bad character '#'"),
            ("a\nb{{if}}", "template: :2: missing value for if"),
        ] {
            let e = parse_error(t);
            assert!(e.contains(want), "{t}: {e}");
        }
        assert!(Template::parse("{{.Spec").unwrap_err().to_string().starts_with("invalid template: template: :1:"));
    }

    #[test]
    fn limits() {
        let long = "x".repeat(MAX_LEN + 1);
        assert!(parse_error(&long).contains("limited to 65536"));
        assert!(Template::parse(&"x".repeat(MAX_LEN)).is_ok());
        let nest = |n: usize| format!("{}x{}", "{{if 1}}".repeat(n), "{{end}}".repeat(n));
        assert_eq!(render(&nest(MAX_DEPTH), &vm()).unwrap(), "x");
        assert!(parse_error(&nest(MAX_DEPTH + 1)).contains("nest at most 64"));
        let parens = |n: usize| format!("{{{{{}1{}}}}}", "(".repeat(n), ")".repeat(n));
        assert_eq!(render(&parens(MAX_DEPTH - 1), &vm()).unwrap(), "1");
        assert!(parse_error(&parens(MAX_DEPTH + 1)).contains("nest at most"));
        // Execution that would run for ever stops.
        let e = exec_err("{{range 1000}}{{range 1000}}{{range 1000}}x{{end}}{{end}}{{end}}");
        assert!(e.contains("exceeded"), "{e}");
        assert!(exec_err("{{printf \"%5000d\" 1}}").contains("width"));
    }

    #[test]
    fn static_check_refuses_fields_no_vm_has() {
        let check = |t: &str| Template::parse(t).unwrap().check("VM");
        assert!(check("{{.Spec.CPUs}} {{.Labels.anything}} {{.Status.IPAddresses}} {{.Created.Time}}").is_ok());
        assert!(
            check("{{range .Spec.Network.Ports}}{{.HostPort}}{{end}}{{with .Status.Runtime}}{{.PID}}{{end}}").is_ok()
        );
        assert!(check("{{range .Labels}}{{.}}{{end}}{{(index .Spec.Network.Ports 0).Whatever}}").is_ok());
        let e = check("{{.Spec.Nope}}").unwrap_err().to_string();
        assert!(e.contains("can't evaluate field Nope in type v1alpha4.VMSpec"), "{e}");
        assert!(check("{{range .Spec.Network.Ports}}{{.Nope}}{{end}}").is_err());
        assert!(check("{{with .Status}}{{if .Running}}{{$.Nope}}{{end}}{{end}}").is_err());
        assert!(check("{{.Status.Network.IPAddresses[0].X}}").is_err());
        assert!(Template::parse("{.nope}").unwrap().check("VM").is_ok());
    }

    #[test]
    fn jsonpath() {
        let v = vm();
        assert_eq!(render("{.status.network.ipAddresses[0]}", &v).unwrap(), "10.61.0.2");
        assert_eq!(render("jsonpath={.metadata.name}", &v).unwrap(), "my-vm");
        assert_eq!(render("{.spec.memory} {.metadata.labels}", &v).unwrap(), "512MB map[app:web tier:front]");
        assert!(Template::parse("{.spec").is_err());
        assert!(Template::parse("{spec}").is_err());
    }

    #[test]
    fn filters() {
        let v = vm();
        let m = |f: &str| Filter::parse(f).unwrap().matches(&v).unwrap();
        assert!(m("{{.ObjectMeta.Name}}=my-vm,{{.Spec.CPUs}}!=3,{{.Spec.Image.OCI}}=~weaveworks/ignite-ubuntu"));
        assert!(m("{{.Spec.Memory}}=~512,{{.Status.Running}}=true"));
        assert!(m("{{.Spec.Memory}}=512.0 MB"));
        assert!(!m("{{.Spec.CPUs}}==3"));
        assert!(m("{{.Labels.app}}!~db"));
        assert!(m("{{.ObjectMeta.Labels}}=~app:web"));
        assert!(m(".metadata.name=my-vm"));
        assert!(m("name=my-vm"));
        assert!(m("{{len .Status.Network.IPAddresses}}=2"));
        assert!(Filter::parse("{{.Spec.CPUs}}").is_err());
        assert!(Filter::parse("{.spec.cpus}=2").is_err());
        let e = Filter::parse("{{.Spec.Nope}}=1").unwrap().matches(&v).unwrap_err();
        assert!(e.to_string().contains("can't evaluate field Nope"), "{e}");
        assert!(Filter::parse("{{.Spec.Nope}}=1").unwrap().check("VM").is_err());
    }

    #[test]
    fn go_number_forms() {
        for (x, want) in [
            (1.5, "1.5"),
            (100000.0, "100000"),
            (1e6, "1e+06"),
            (123456789.0, "1.23456789e+08"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5, "-2.5"),
            (3.0, "3"),
        ] {
            assert_eq!(go_float(x), want, "{x}");
        }
        assert_eq!(size_text(0), "0 B");
        assert_eq!(size_text(1024), "1024 B");
        assert_eq!(size_text(1025), "1.0 KB");
        assert_eq!(size_text(3 << 30), "3.0 GB");
        assert_eq!(go_quote("a\"b\\\n\u{1}é"), "\"a\\\"b\\\\\\n\\x01é\"");
    }

    /// Every field that ignite writes for a VM, an image and a kernel is in the schema (so a
    /// field added to the API without a Go type here fails this test).
    #[test]
    fn schema_covers_every_serialized_field() {
        use ignite_api::*;
        let t: chrono::DateTime<Utc> = now();
        let meta = ObjectMeta {
            name: "n".into(),
            uid: Some(Uid::from_u64(1)),
            created: Some(t),
            labels: [("a".to_string(), "b".to_string())].into(),
            annotations: [("c".to_string(), "d".to_string())].into(),
        };
        let oci = |s: &str| OciSpec { oci: Some(s.parse().unwrap()) };
        let source = OciSource { id: Some("sha256:1".into()), size: Some(Size::from_mib(1)) };
        let mut vm = Vm::new(
            meta.clone(),
            VmSpec {
                image: oci("busybox"),
                sandbox: oci("weaveworks/ignite:dev"),
                kernel: VmKernelSpec { oci: Some("k:1".parse().unwrap()), cmd_line: "x".into() },
                cpus: 1,
                memory: Some(Size::from_mib(512)),
                disk_size: Some(Size::from_mib(4096)),
                network: VmNetworkSpec { ports: vec!["127.0.0.1:80:80/udp".parse().unwrap()] },
                storage: VmStorageSpec {
                    volumes: vec![Volume {
                        name: "v".into(),
                        block_device: Some(BlockDeviceVolume { path: "/p".into() }),
                    }],
                    volume_mounts: vec![VolumeMount { name: "v".into(), mount_path: "/m".into() }],
                },
                copy_files: vec![FileMapping { host_path: "/a".into(), vm_path: "/b".into() }],
                ssh: Some(Ssh::Generate),
                vmm: Some("qemu".into()),
                agent: Some(true),
                jail: Some(true),
            },
        );
        vm.status = VmStatus {
            running: true,
            runtime: Some(RuntimeStatus {
                id: "i".into(),
                name: "qemu".into(),
                pid: Some(1),
                accel: Some("kvm".into()),
                jail: Some(ignite_api::JailStatus {
                    uid: 1_600_000_001,
                    cgroups: vec!["/sys/fs/cgroup/ignite.slice/x".into()],
                    memory_max: Some(1 << 30),
                    cpu_max: "100000 100000".into(),
                    seccomp: "QEMU -sandbox on".into(),
                }),
            }),
            start_time: Some(t),
            network: Some(NetworkStatus { plugin: "cni".into(), ip_addresses: vec!["10.0.0.1".parse().unwrap()] }),
            image: source.clone(),
            kernel: source.clone(),
            id_prefix: "ignite".into(),
            exit: Some(ExitStatus { code: Some(0), reason: "stopped".into(), time: Some(t) }),
        };
        let mut image = Image::new(meta.clone(), ImageSpec { oci: Some("busybox".parse().unwrap()) });
        image.status = ImageStatus { oci_source: source.clone() };
        let mut kernel = Kernel::new(meta, KernelSpec { oci: Some("k:1".parse().unwrap()) });
        kernel.status = KernelStatus { version: "6.1".into(), oci_source: source };

        fn walk(j: &Value, ty: &'static Ty, path: &str, missing: &mut Vec<String>) {
            match (ty, j) {
                (Ty::Struct(s), Value::Object(o)) => {
                    for (k, x) in o {
                        match find_field(s, k) {
                            Some(p) => walk(x, p[p.len() - 1].ty, &format!("{path}.{k}"), missing),
                            None => missing.push(format!("{path}.{k}")),
                        }
                    }
                }
                (Ty::Struct(_), _) => missing.push(format!("{path}: not an object")),
                (Ty::Ptr(t), _) => walk(j, t, path, missing),
                (Ty::List(t, ..), Value::Array(a)) => a.iter().for_each(|x| walk(x, t, &format!("{path}[]"), missing)),
                (Ty::Any, _) => missing.push(format!("{path}: untyped")),
                _ => {}
            }
        }
        let mut missing = Vec::new();
        walk(&serde_json::to_value(&vm).unwrap(), &VM, "vm", &mut missing);
        walk(&serde_json::to_value(&image).unwrap(), &IMAGE, "image", &mut missing);
        walk(&serde_json::to_value(&kernel).unwrap(), &KERNEL, "kernel", &mut missing);
        assert!(missing.is_empty(), "fields without a Go type in the template schema: {missing:?}");
        // And each prints without an error.
        let v = serde_json::to_value(&vm).unwrap();
        assert!(render("{{.}}", &v).unwrap().starts_with(
            "{{{VM ignite.weave.works/v1alpha4}} {n 0000000000000001 2024-05-01 12:00:00.12 +0000 UTC map[a:b] map[c:d]} {{busybox:latest}"
        ));
        assert_eq!(
            render("{{.Spec.Network.Ports}} {{.Status.Exit.Code}} {{.Spec.Agent}}", &v).unwrap(),
            "127.0.0.1:80->80/udp 0 true"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(src in "\\PC{0,64}") {
            if let Ok(t) = Template::parse(&src) {
                let _ = t.check("VM");
                let _ = t.render(&vm());
            }
            if let Ok(f) = Filter::parse(&src) {
                let _ = f.matches(&vm());
            }
        }

        #[test]
        fn template_like_input_never_panics(parts in prop::collection::vec(prop::sample::select(vec![
            "{{", "}}", "{{-", " -}}", "{{/*", "*/", "{{end}}", "{{else}}", "{{if ", "{{range ", "{{with ", "$x := ",
            "$", "$x", ".", ".Spec", ".Name", ".Labels", ".Status.Network.IPAddresses", "[0]", "[9]", "(", ")", "|",
            " ", "index ", "len ", "printf ", "\"%d %s %v %q %x %-5.2f\"", "json ", "eq ", "and ", "or ", "not ", "1",
            "-2", "1.5", "'c'", "\"s\"", "`r`", "nil", "true", ",", "$i, $e := ", "{{break}}", "{{continue}}", "x",
        ]), 0..24)) {
            let src: String = parts.concat();
            if let Ok(t) = Template::parse(&src) {
                let _ = t.check("VM");
                let _ = t.render(&vm());
                let _ = t.render(&json!({"a": [1, {"b": null}]}));
            }
        }
    }
}
