//! `ignite`: run OCI images as microVMs with a container UX. Thin: parse arguments, set up
//! logging, call one command, map the result to an exit code (see `exit_code`).
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod context;
mod output;
mod remote;
mod template;
mod usage;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    let cli = cli::Cli::parse();
    // `--firecracker PATH` holds for this process and the supervisors it starts (still one
    // thread here).
    if let Some(p) = &cli.global.firecracker {
        std::env::set_var("IGNITE_FIRECRACKER", std::path::absolute(p).unwrap_or_else(|_| p.clone()));
    }
    init_logging(&cli.global);
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("error: {}", ignite_runtime::errors::chain(e.as_ref()));
            // Whatever an image, a guest or a tool put into the message: never terminal controls.
            let msg: String = msg
                .chars()
                .flat_map(
                    |c| if c.is_control() && c != '\n' && c != '\t' { c.escape_default().collect() } else { vec![c] },
                )
                .collect();
            eprintln!("{msg}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// `ignite ps | head -1`: once the reader is gone, stop quietly with the status a process
/// killed by SIGPIPE has (as Weave Ignite's Go binary did), instead of a panic message.
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// Exit codes (see `errors`): 1 = the operation failed; 2 = bad input (usage, manifest,
/// flags; clap also uses 2); 3 = the named object does not exist. An error that ignited
/// reported carries the exit code it classified.
fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(r) = cause.downcast_ref::<remote::RemoteError>() {
            return r.exit_code.unwrap_or(match r.status {
                404 => 3,
                400 => 2,
                _ => 1,
            });
        }
        if cause.downcast_ref::<usage::UsageError>().is_some() {
            return 2;
        }
    }
    ignite_runtime::errors::classify(e.as_ref()).exit_code()
}

fn init_logging(g: &cli::Global) {
    let level = g.log_level.as_str();
    let filter = tracing_subscriber::EnvFilter::try_from_env("IGNITE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}
