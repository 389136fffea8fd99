//! `ignite-spawn --root ROOT [--hold-fd N]... UID`: the per-VM supervisor (see
//! `ignite_supervisor::supervise`). `ignite-spawn --jailer SPEC` is the jailer its VMM starts
//! as (see `ignite_supervisor::jail`). Started by `ignite start`, which hands it the VM's leases
//! as inherited descriptors (`--hold-fd`, see `ignite_runtime::lease`); not meant to be run
//! by hand.
#![forbid(unsafe_code)]

fn usage() -> ! {
    eprintln!("usage: ignite-spawn --root ROOT [--hold-fd N]... VM_UID (started by `ignite start`)");
    std::process::exit(2);
}

fn main() {
    // Jailer mode: the supervisor starts its VMM through this (see ignite_supervisor::jail).
    let all: Vec<String> = std::env::args().collect();
    if let [_, flag, spec] = all.as_slice() {
        if flag == "--jailer" {
            ignite_supervisor::jail::jailer_main(std::path::Path::new(spec));
        }
    }
    let mut args = std::env::args().skip(1);
    let mut root = None;
    let mut fds = Vec::new();
    let mut uid = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--root" => root = Some(std::path::PathBuf::from(args.next().unwrap_or_else(|| usage()))),
            "--hold-fd" => fds.push(args.next().and_then(|n| n.parse::<i32>().ok()).unwrap_or_else(|| usage())),
            _ if uid.is_none() && !a.starts_with('-') => uid = Some(a),
            _ => usage(),
        }
    }
    let (Some(root), Some(uid)) = (root, uid) else { usage() };
    // Its name before it records anything: liveness checks look for it, and the binary's file
    // may be called otherwise (IGNITE_SPAWN).
    if let Err(e) = ignite_runtime::sys::name_this_process() {
        eprintln!("ignite-spawn: cannot set its process name: {e}");
    }
    // Nothing this process inherited goes on to the VMM but what it passes on purpose.
    ignite_runtime::sys::close_inherited_on_exec();
    // The leases stay open (never closed) for this process's life, and are not passed on.
    let held = ignite_runtime::sys::keep_fds_to_self(&fds);
    if held.len() != fds.len() {
        eprintln!("ignite-spawn: some of the descriptors {fds:?} are not open");
    }
    std::process::exit(ignite_supervisor::supervise::run(&root, &uid));
}
