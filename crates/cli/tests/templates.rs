//! `--template` (`ps -t`, `inspect -t`) and `ps --filter` as Weave Ignite users write them: Go
//! templates over VMs that are created but never booted, printed in Ignite's text form.

mod common;

use std::path::Path;

use common::{fails, ok, store_root};
use serde_json::{json, Value};

/// Creates a VM from the busybox image; returns its UID.
fn create(root: &Path, name: &str, flags: &[&str]) -> String {
    let mut args = vec!["create", "busybox", "--name", name];
    args.extend_from_slice(flags);
    ok(root, &args);
    ok(root, &["inspect", "vm", name, "-t", "{{.UID}}"]).trim().to_string()
}

/// Records addresses in a created VM's stored status, as a start records them (no VM boots in
/// these tests).
fn give_addresses(root: &Path, uid: &str, ips: &[&str]) {
    let p = root.join("vm").join(uid).join("metadata.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["status"]["network"] = json!({"plugin": "cni", "ipAddresses": ips});
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn inspect(root: &Path, vm: &str, t: &str) -> String {
    let out = ok(root, &["inspect", "vm", vm, "-t", t]);
    out.strip_suffix('\n').unwrap_or(&out).to_string()
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut l: Vec<String> = s.lines().map(String::from).collect();
    l.sort();
    l
}

/// Two VMs: `web` (2 CPUs, 512MB, two ports, labels, two addresses) and `db` (defaults, 1GB).
fn two_vms(root: &Path) {
    let web = create(
        root,
        "web",
        &[
            "--cpus",
            "2",
            "--memory",
            "512MB",
            "-p",
            "8080:80,127.0.0.1:5353:53/udp",
            "-l",
            "app=web",
            "-l",
            "tier=front",
        ],
    );
    create(root, "db", &["--memory", "1GB"]);
    give_addresses(root, &web, &["10.61.0.2", "10.61.0.3"]);
}

#[test]
fn ps_templates_range_branch_and_pipe() {
    let d = tempfile::tempdir().unwrap();
    let root = &store_root(d.path());
    two_vms(root);
    let out = ok(root, &["ps", "-a", "-t", "{{.Name}}: {{range .Status.Network.IPAddresses}}{{.}} {{end}}"]);
    assert_eq!(sorted_lines(&out), ["db: ", "web: 10.61.0.2 10.61.0.3 "]);
    let out = ok(
        root,
        &[
            "ps",
            "-a",
            "-t",
            "{{.Name}}={{range $i, $e := .Status.Network.IPAddresses}}{{if $i}},{{end}}{{$e}}{{else}}none{{end}}",
        ],
    );
    assert_eq!(sorted_lines(&out), ["db=none", "web=10.61.0.2,10.61.0.3"]);
    let out = ok(
        root,
        &["ps", "-a", "-t", "{{.Name}} {{if .Status.Running}}up{{else if gt .Spec.CPUs 1}}big{{else}}small{{end}}"],
    );
    assert_eq!(sorted_lines(&out), ["db small", "web big"]);
    let out = ok(root, &["ps", "-a", "-t", "{{- /* names */ -}} {{.Name | upper | printf \"%-5s|\"}}"]);
    assert_eq!(sorted_lines(&out), ["DB   |", "WEB  |"]);
    let out = ok(root, &["ps", "-a", "-t", "{{$n := .Name}}{{range .Spec.Network.Ports}}{{$n}}:{{.HostPort}} {{end}}"]);
    assert_eq!(sorted_lines(&out), ["", "web:8080 web:5353 "]);
    // The v1alpha2 path Ignite's docs show.
    assert_eq!(
        ok(root, &["ps", "-a", "-f", "{{.ObjectMeta.Name}}=web", "-t", "{{.Status.IPAddresses}}"]),
        "10.61.0.2, 10.61.0.3\n"
    );
}

#[test]
fn inspect_prints_ignite_text_forms() {
    let d = tempfile::tempdir().unwrap();
    let root = &store_root(d.path());
    two_vms(root);
    assert_eq!(inspect(root, "web", "{{.Spec.Memory}}"), "512.0 MB");
    // Ignite's datasize form: 1GB is "1024.0 MB", as its e2e tests expect.
    assert_eq!(inspect(root, "db", "{{.Spec.Memory}} {{.Spec.CPUs}} {{.Spec.DiskSize}}"), "1024.0 MB 1 4.0 GB");
    assert_eq!(inspect(root, "web", "{{.Spec.Network.Ports}}"), "0.0.0.0:8080->80/tcp, 127.0.0.1:5353->53/udp");
    assert_eq!(
        inspect(root, "web", "{{range .Spec.Network.Ports}}[{{.}}]{{end}}"),
        "[0.0.0.0:8080->80/tcp][127.0.0.1:5353->53/udp]"
    );
    // json: the JSON form, as `-o json` has it.
    let ports: Value = serde_json::from_str(&inspect(root, "web", "{{json .Spec.Network.Ports}}")).unwrap();
    let full: Value = serde_json::from_str(&ok(root, &["inspect", "vm", "web", "-o", "json"])).unwrap();
    assert_eq!(ports, full["spec"]["network"]["ports"]);
    assert_eq!(inspect(root, "web", "{{.Spec.Memory | json}}"), "\"512MB\"");
    // Maps: index, a missing key (<no value> as Go prints it), Go's map form.
    assert_eq!(inspect(root, "web", "{{index .ObjectMeta.Labels \"app\"}}"), "web");
    assert_eq!(
        inspect(root, "web", "{{.Labels.nope}}|{{index .Labels \"nope\"}}|{{.Labels}}"),
        "<no value>||map[app:web tier:front]"
    );
    assert_eq!(inspect(root, "web", "{{if .Status.Running}}up{{else}}down{{end}}"), "down");
    assert_eq!(inspect(root, "db", "{{with .Status.Network.IPAddresses}}{{.}}{{else}}no address{{end}}"), "no address");
    // Ignite's e2e line (config_test.go), short image names, unset pointers as <nil>.
    assert_eq!(
        inspect(root, "db", "'{{.Spec.Memory}} {{.Spec.CPUs}} {{.Spec.DiskSize}} {{.Spec.Image.OCI}} {{.Spec.Kernel.OCI}} {{.Spec.SSH}} {{.Status.Running}}'"),
        "'1024.0 MB 1 4.0 GB busybox:latest localhost/ignite-kernel:6.1 <nil> false'"
    );
    assert_eq!(inspect(root, "db", "{{.Status.StartTime}}"), "<nil>");
    // Times: Go's time.Time form, stable from one call to the next.
    let t = inspect(root, "db", "{{.ObjectMeta.Created}}");
    assert!(t.ends_with(" +0000 UTC") && t.as_bytes()[4] == b'-' && t.as_bytes()[10] == b' ', "{t}");
    assert_eq!(inspect(root, "db", "{{.Created.Time}}"), t);
    assert_eq!(inspect(root, "web", "{{printf \"%-6s|%3d|%v\" .Name .Spec.CPUs .Status.Running}}"), "web   |  2|false");
    assert_eq!(
        inspect(root, "web", "{{len .Status.Network.IPAddresses}} {{eq .Spec.CPUs 2}} {{and .Labels .Spec.CPUs}}"),
        "2 true 2"
    );
    // Images and kernels.
    let out = ok(
        root,
        &[
            "inspect",
            "image",
            "docker.io/library/busybox:latest",
            "-t",
            "{{.Kind}} {{.Name}} {{.Status.OCISource.Size}}",
        ],
    );
    assert!(out.starts_with("Image docker.io/library/busybox:latest ") && out.ends_with(" MB\n"), "{out}");
    let out = ok(
        root,
        &[
            "inspect",
            "kernel",
            "localhost/ignite-kernel:6.1",
            "-t",
            "{{.Kind}} {{.Name}}|{{.Spec.OCI}}|{{.Status.Version}}",
        ],
    );
    assert!(out.starts_with("Kernel localhost/ignite-kernel:6.1||") && out.contains("never-booted"), "{out}");
    // JSONPath still works.
    assert_eq!(inspect(root, "web", "{.status.network.ipAddresses[1]}"), "10.61.0.3");
}

#[test]
fn bad_templates_exit_2_naming_the_problem() {
    let d = tempfile::tempdir().unwrap();
    let root = &store_root(d.path());
    two_vms(root);
    let field = "can't evaluate field Nope in type v1alpha4.VMSpec";
    let o = common::ignite(root, &["ps", "-a", "-t", "{{.Spec.Nope}}"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains(field), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout.is_empty(), "a failing template prints nothing");
    fails(root, &["inspect", "vm", "web", "-t", "{{.Spec.Nope}}"], 2, field);
    fails(root, &["inspect", "vm", "web", "-t", "x {{.Spec"], 2, "unclosed action");
    fails(root, &["ps", "-t", "{{nope .Name}}"], 2, "function \"nope\" not defined");
    fails(root, &["ps", "-t", "{{if .Name}}"], 2, "unexpected EOF");
    fails(root, &["inspect", "vm", "web", "-t", "{{index .Status.Network.IPAddresses 3}}"], 2, "index out of range: 3");
    fails(root, &["inspect", "vm", "web", "-t", "{{.Name.Nope}}"], 2, "can't evaluate field Nope in type string");
    fails(root, &["ps", "-a", "-f", "{{.Spec.Nope}}=1"], 2, field);
    let big = "x".repeat(64 * 1024 + 1);
    fails(root, &["ps", "-t", &big], 2, "limited to 65536");
    // Refused before any VM is looked at: with no VM, and without -a (no VM is running).
    fails(root, &["ps", "-t", "{{.Spec.Nope}}"], 2, field);
    fails(&d.path().join("empty"), &["ps", "-t", "{{range .Spec.Network.Ports}}{{.Nope}}{{end}}"], 2, "Nope");
}

#[test]
fn filters_keep_working() {
    let d = tempfile::tempdir().unwrap();
    let root = &store_root(d.path());
    two_vms(root);
    let names = |f: &str| sorted_lines(&ok(root, &["ps", "-a", "-f", f, "-t", "{{.Name}}"]));
    assert_eq!(names("{{.Spec.CPUs}}=2,{{.Spec.Image.OCI}}=~busybox"), ["web"]);
    assert_eq!(names("{{.Spec.CPUs}}!=2"), ["db"]);
    assert_eq!(names("{{.Spec.Memory}}=~1024"), ["db"]);
    assert_eq!(names("{{.Spec.Memory}}==512.0 MB"), ["web"]);
    assert_eq!(names("{{.ObjectMeta.Labels}}=~app:web"), ["web"]);
    assert_eq!(names("{{.Status.Running}}=false"), ["db", "web"]);
    assert_eq!(names("{{.ObjectMeta.Name}}!~we"), ["db"]);
    assert_eq!(names("name=db"), ["db"]);
    assert_eq!(names("{{len .Status.Network.IPAddresses}}=2"), ["web"]);
    assert_eq!(ok(root, &["ps", "-a", "-q", "-f", "{{.ObjectMeta.Name}}=web"]).lines().count(), 1);
    let table = ok(root, &["ps", "-a", "-f", "{{.Spec.CPUs}}=2"]);
    assert_eq!(table.lines().count(), 2, "{table}");
    fails(root, &["ps", "-a", "-f", "{{.Spec.CPUs}}"], 2, "invalid filter");
}
