//! `ignite ps`: Ignite's columns, filters, templates, JSON/YAML.

use ignite_api::{Vm, VmState};

use crate::cli::{PsArgs, PsOutput};
use crate::context::Ctx;
use crate::output::{ago, since, table};
use crate::template::{Filter, Template, TemplateError};

pub fn run(ctx: &Ctx, a: PsArgs) -> anyhow::Result<()> {
    let usage = |e: TemplateError| super::UsageError(e.to_string());
    let filter = a.filter.as_deref().map(Filter::parse).transpose().map_err(usage)?;
    let template = a.template.as_deref().map(Template::parse).transpose().map_err(usage)?;
    // A field that no VM has is refused even when no VM is listed.
    if let Some(f) = &filter {
        f.check(Vm::KIND).map_err(usage)?;
    }
    if let Some(t) = &template {
        t.check(Vm::KIND).map_err(usage)?;
    }
    let mut vms = Vec::new();
    for vm in ctx.list_vms()? {
        if !a.all && vm.state() != VmState::Running && !ignite_runtime::status::outdated(&vm) {
            continue;
        }
        let v = serde_json::to_value(&vm)?;
        if filter.as_ref().map(|f| f.matches(&v)).transpose().map_err(usage)?.unwrap_or(true) {
            vms.push((vm, v));
        }
    }
    if ctx.global.quiet {
        for (vm, _) in &vms {
            println!("{}", vm.uid());
        }
        return Ok(());
    }
    if let Some(t) = template {
        // Every VM is rendered before anything is printed: a template that fails prints nothing.
        let mut out = String::new();
        for (_, v) in &vms {
            out.push_str(&t.render(v).map_err(usage)?);
            out.push('\n');
        }
        print!("{out}");
        return Ok(());
    }
    match a.output {
        PsOutput::Json => {
            println!("{}", serde_json::to_string_pretty(&vms.iter().map(|(_, v)| v).collect::<Vec<_>>())?)
        }
        PsOutput::Yaml => print!("{}", serde_yaml::to_string(&vms.iter().map(|(vm, _)| vm).collect::<Vec<_>>())?),
        PsOutput::Table | PsOutput::Wide => {
            let wide = a.output == PsOutput::Wide;
            let mut header =
                vec!["VM ID", "IMAGE", "KERNEL", "SIZE", "CPUS", "MEMORY", "CREATED", "STATUS", "IPS", "PORTS", "NAME"];
            if wide {
                header.extend(["VMM", "PID", "HOST MEMORY", "LABELS"]);
            }
            let rows: Vec<Vec<String>> = vms.iter().map(|(vm, _)| row(vm, wide)).collect();
            table(&header, &rows);
            if vms.iter().any(|(vm, _)| ignite_runtime::status::outdated(vm)) {
                eprintln!(
                    "The symbol * on the VM status indicates that the VM's record on disk may not be up-to-date with the actual VM status (its supervisor runs)"
                );
            }
        }
    }
    Ok(())
}

fn row(vm: &Vm, wide: bool) -> Vec<String> {
    let outdated = ignite_runtime::status::outdated(vm);
    let status = match vm.state() {
        _ if outdated => format!("*Up {}", since(vm.status.start_time)),
        VmState::Running => format!("Up {}", since(vm.status.start_time)),
        VmState::Stopped => "Stopped".to_string(),
        VmState::Created => "Created".to_string(),
    };
    // Only a running VM holds an address: a start killed after its network was attached
    // leaves the address in the record until recovery releases it (the next mutating
    // command), and `ps` must not show it as the VM's meanwhile.
    let ips = vm
        .status
        .network
        .as_ref()
        .filter(|_| outdated || vm.state() == VmState::Running)
        .map(|n| n.ip_addresses.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let ports = vm.spec.network.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
    let mut r = vec![
        vm.uid(),
        vm.spec.image.oci.as_ref().map(|o| o.to_string()).unwrap_or_default(),
        vm.spec.kernel.oci.as_ref().map(|o| o.to_string()).unwrap_or_default(),
        vm.spec.disk_size().human(),
        vm.spec.cpus.to_string(),
        vm.spec.memory().human(),
        ago(vm.metadata.created),
        status,
        ips,
        ports,
        vm.metadata.name.clone(),
    ];
    if wide {
        let rt = vm.status.runtime.as_ref();
        r.push(vm.spec.vmm.clone().or_else(|| rt.map(|r| r.name.clone())).unwrap_or_default());
        r.push(rt.and_then(|r| r.pid).map(|p| p.to_string()).unwrap_or_default());
        r.push(
            ignite_runtime::status::host_memory(vm)
                .map(|b| ignite_api::Size::from_bytes(b).human())
                .unwrap_or_else(|| "-".into()),
        );
        r.push(vm.metadata.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_running_vm_shows_its_addresses() {
        let mut vm = Vm::new(Default::default(), Default::default());
        // A start killed after its network was attached: the address is still recorded.
        vm.status.network =
            Some(ignite_api::NetworkStatus { plugin: "cni".into(), ip_addresses: vec!["10.61.0.5".parse().unwrap()] });
        let ips = |vm: &Vm| row(vm, false)[8].clone();
        assert_eq!(vm.state(), VmState::Created);
        assert_eq!(ips(&vm), "");
        vm.status.running = true;
        assert_eq!(ips(&vm), "10.61.0.5");
        vm.status.running = false;
        vm.status.start_time = Some(chrono::Utc::now());
        assert_eq!(vm.state(), VmState::Stopped);
        assert_eq!(ips(&vm), "");
    }
}
