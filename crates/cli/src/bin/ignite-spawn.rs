//! `ignite-spawn --root ROOT UID`: the per-VM supervisor (see `ignite_runtime::supervisor`).
//! Started by `ignite start`; not meant to be run by hand.
#![forbid(unsafe_code)]

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (root, uid) = match args.as_slice() {
        [flag, root, uid] if flag == "--root" => (std::path::PathBuf::from(root), uid.clone()),
        _ => {
            eprintln!("usage: ignite-spawn --root ROOT VM_UID (started by `ignite start`)");
            std::process::exit(2);
        }
    };
    std::process::exit(ignite_runtime::supervisor::run(&root, &uid));
}
