//! `ignite exec VM COMMAND...`: runs a command in the VM through its guest agent, or over SSH
//! when the VM has no agent (or `-i KEY` asks for SSH). Stdin is streamed, output arrives as
//! it is produced, signals (Ctrl-C) reach the command, and its exit code is ignite's.

use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use ignite_agent::proto::ExecRequest;
use ignite_api::Vm;
use ignite_runtime::agent::{AgentError, Session};
use ignite_runtime::vmdir::VmDir;

use crate::cli::ExecArgs;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, a: ExecArgs) -> anyhow::Result<()> {
    let store = ctx.store()?;
    let vm = super::used_vm(&store, &a.vm)?;
    let timeout = Duration::from_secs(u64::from(a.timeout));
    let env = parse_env(&a.env)?;
    if let Some(w) = &a.workdir {
        if !w.starts_with('/') {
            return Err(super::UsageError(format!("invalid --workdir {w:?}: give an absolute path in the VM")).into());
        }
    }
    if !vm.status.running {
        return Err(ignite_runtime::ssh::SshError::NotRunning { name: vm.metadata.name.clone() }.into());
    }
    if a.identity.is_none() {
        match Session::connect(&vm.metadata.name, &store.dir::<Vm>(&vm.uid()), timeout) {
            Ok(s) => exec_agent(s, &a, env),
            Err(AgentError::NotEnabled { .. }) if vm.spec.ssh.is_none() => return Err(no_way_in(&store, &vm)),
            Err(AgentError::NotEnabled { .. }) => {}
            Err(e @ AgentError::NotReady { .. }) if vm.spec.ssh.is_some() => {
                tracing::warn!("{e}; trying SSH");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let t = ignite_runtime::ssh::target(&store, &vm, a.identity.as_deref(), timeout)?;
    // Over SSH the remote shell runs the command (each word quoted):
    // `sh -c 'cd "$0" && exec "$@"' DIR env K=V... COMMAND`.
    let mut command = Vec::new();
    if let Some(w) = &a.workdir {
        command.extend(["sh", "-c", "cd \"$0\" && exec \"$@\"", w].map(String::from));
    }
    if !env.is_empty() {
        command.push("env".into());
        command.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    }
    command.extend(a.command.iter().cloned());
    let err = ignite_runtime::ssh::ssh_command(&t, a.tty, &command, timeout).exec();
    if err.kind() == std::io::ErrorKind::NotFound {
        return Err(ignite_runtime::ssh::SshError::NoClient.into());
    }
    Err(anyhow::Error::new(err).context("cannot run ssh"))
}

/// The command as the guest runs it. One argument holding a space is a shell command line, as
/// Weave Ignite ran it (its exec went through SSH, whose remote shell parses the line:
/// `ignite exec vm "mkdir -p /x && echo ok"`); several arguments are the argv, as Docker's.
fn argv(command: &[String]) -> Vec<String> {
    match command {
        [line] if line.contains(char::is_whitespace) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
        _ => command.to_vec(),
    }
}

/// The error for a VM that has neither an agent nor an SSH key, saying why it has no agent.
pub fn no_way_in(store: &ignite_store::Store, vm: &Vm) -> anyhow::Error {
    let why = std::fs::read_to_string(VmDir::of(store, &vm.uid()).no_agent_reason()).unwrap_or_default();
    let why = if why.trim().is_empty() { "it started without one".to_string() } else { why.trim().to_string() };
    anyhow::anyhow!(
        "VM {:?} has no guest agent ({why}) and no SSH key: restart it with an agent (a static ignite-agent: \
         scripts/build-agent.sh, or ignite as cargo builds it), or create it with --ssh (or give -i KEY)",
        vm.metadata.name
    )
}

/// Restores the terminal's settings when dropped.
struct RawMode(Option<rustix::termios::Termios>);

impl RawMode {
    fn enter(on: bool) -> RawMode {
        if !on {
            return RawMode(None);
        }
        let stdin = rustix::stdio::stdin();
        let Ok(saved) = rustix::termios::tcgetattr(stdin) else { return RawMode(None) };
        let mut raw = saved.clone();
        raw.make_raw();
        if rustix::termios::tcsetattr(stdin, rustix::termios::OptionalActions::Now, &raw).is_err() {
            return RawMode(None);
        }
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = rustix::termios::tcsetattr(rustix::stdio::stdin(), rustix::termios::OptionalActions::Now, t);
        }
    }
}

fn window_size() -> Option<(u16, u16)> {
    rustix::termios::tcgetwinsize(rustix::stdio::stdout()).ok().filter(|w| w.ws_row > 0).map(|w| (w.ws_row, w.ws_col))
}

/// `-e KEY=VALUE` flags, as Docker's: the key must be a valid variable name.
fn parse_env(flags: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    flags
        .iter()
        .map(|e| {
            let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
            let valid = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(super::UsageError(format!(
                    "invalid --env {e:?}: use KEY=VALUE with a shell variable name"
                ))
                .into());
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

fn exec_agent(s: Session, a: &ExecArgs, mut env: Vec<(String, String)>) -> ! {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGWINCH};
    let tty = a.tty;
    let (rows, cols) = if tty { window_size().unwrap_or((24, 80)) } else { (0, 0) };
    if tty && !env.iter().any(|(k, _)| k == "TERM") {
        env.insert(0, ("TERM".to_string(), std::env::var("TERM").unwrap_or_else(|_| "xterm".into())));
    }
    let req = ExecRequest { argv: argv(&a.command), env, cwd: a.workdir.clone(), tty, rows, cols };
    // Signals to ignite go to the command (in a terminal, Ctrl-C arrives as a byte instead).
    let sender = s.sender();
    if let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH]) {
        std::thread::spawn(move || {
            for sig in signals.forever() {
                if sig == SIGWINCH {
                    if let Some((r, c)) = window_size() {
                        sender.resize(r, c);
                    }
                } else {
                    sender.signal(sig);
                }
            }
        });
    }
    let raw = RawMode::enter(tty && std::io::stdin().is_terminal());
    let result = s.exec(req, Some(Box::new(std::io::stdin())), &mut std::io::stdout(), &mut std::io::stderr());
    drop(raw);
    match result {
        Ok(exit) => {
            if let Some(e) = &exit.error {
                eprintln!("error: {e}");
            }
            std::process::exit(exit.shell_code())
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_string_with_spaces_is_a_shell_command_line() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(super::argv(&s(&["mkdir -p /x && echo ok"])), s(&["/bin/sh", "-c", "mkdir -p /x && echo ok"]));
        assert_eq!(super::argv(&s(&["uname"])), s(&["uname"]));
        assert_eq!(super::argv(&s(&["sh", "-c", "echo a; echo b"])), s(&["sh", "-c", "echo a; echo b"]));
    }
}
