//! `ignite`: run OCI images as microVMs with a container UX. Thin: parse arguments, set up
//! logging, call one command, map the result to an exit code (see `exit_code`).
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod context;
mod output;
mod remote;
mod template;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging(&cli.global);
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = format!("error: {e}");
            let mut src = e.source();
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("{msg}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Exit codes: 1 = the operation failed; 2 = bad input (usage, manifest, flags; clap also
/// uses 2); 3 = the named object does not exist.
fn exit_code(e: &anyhow::Error) -> u8 {
    use ignite_store::StoreError;
    for cause in e.chain() {
        if let Some(se) = cause.downcast_ref::<StoreError>() {
            return match se {
                StoreError::NotFound { .. } => 3,
                StoreError::Ambiguous { .. } | StoreError::NameTaken { .. } | StoreError::UidTaken { .. } => 2,
                _ => 1,
            };
        }
        if let Some(r) = cause.downcast_ref::<remote::RemoteError>() {
            return match r.status {
                404 => 3,
                400 | 409 => 2,
                _ => 1,
            };
        }
        if cause.downcast_ref::<commands::UsageError>().is_some()
            || cause.downcast_ref::<ignite_api::DecodeError>().is_some()
            || cause.downcast_ref::<ignite_api::ValidationErrors>().is_some()
            || cause.downcast_ref::<ignite_runtime::ConfigError>().is_some()
        {
            return 2;
        }
        if let Some(ce) = cause.downcast_ref::<ignite_runtime::CreateError>() {
            use ignite_runtime::CreateError as C;
            return match ce {
                C::Store(StoreError::Io { .. }) | C::Import(_) => 1,
                C::Disk { source: ignite_disk::DiskError::TooSmall { .. }, .. } => 2,
                C::Disk { .. } => 1,
                _ => 2,
            };
        }
    }
    1
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
