//! `ignite attach`: the VM's serial console on this terminal; `^P^Q` detaches (the VM keeps
//! running).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use ignite_api::Vm;
use ignite_runtime::vmdir::VmDir;
use ignite_store::Store;

use super::running_vm;
use crate::cli::VmArg;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: VmArg) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let vm = running_vm(&store, &a.vm)?;
    attach(&store, &vm)
}

/// Restores the terminal mode on drop.
struct RawMode(Option<rustix::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        let stdin = rustix::stdio::stdin();
        if !rustix::termios::isatty(stdin) {
            return RawMode(None);
        }
        let Ok(orig) = rustix::termios::tcgetattr(stdin) else { return RawMode(None) };
        let mut raw = orig.clone();
        raw.make_raw();
        let _ = rustix::termios::tcsetattr(stdin, rustix::termios::OptionalActions::Now, &raw);
        RawMode(Some(orig))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(orig) = &self.0 {
            let _ = rustix::termios::tcsetattr(rustix::stdio::stdin(), rustix::termios::OptionalActions::Now, orig);
        }
    }
}

pub fn attach(store: &Store, vm: &Vm) -> anyhow::Result<()> {
    let sock = VmDir::of(store, &vm.uid()).attach_socket();
    let conn = UnixStream::connect(&sock)
        .map_err(|e| anyhow::anyhow!("cannot attach to VM {:?} ({}): {e}", vm.metadata.name, sock.display()))?;
    eprintln!("Attached to VM {:?}: detach with ^P^Q", vm.metadata.name);
    let raw = RawMode::enter();
    let mut from_vm = conn.try_clone()?;
    let out = std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut stdout = std::io::stdout();
        while let Ok(n) = from_vm.read(&mut buf) {
            if n == 0 || stdout.write_all(&buf[..n]).and_then(|_| stdout.flush()).is_err() {
                break;
            }
        }
    });
    let mut to_vm = conn;
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 1024];
    let mut prev_ctrl_p = false;
    'input: loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut fwd = Vec::with_capacity(n);
        for &b in &buf[..n] {
            if prev_ctrl_p && b == 0x11 {
                break 'input; // ^P^Q
            }
            if prev_ctrl_p {
                fwd.push(0x10);
            }
            prev_ctrl_p = b == 0x10;
            if !prev_ctrl_p {
                fwd.push(b);
            }
        }
        if to_vm.write_all(&fwd).is_err() {
            break;
        }
    }
    drop(raw);
    let _ = to_vm.shutdown(std::net::Shutdown::Both);
    let _ = out.join();
    eprintln!("\nDetached from VM {:?}", vm.metadata.name);
    Ok(())
}
