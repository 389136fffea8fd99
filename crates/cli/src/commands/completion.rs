//! `ignite completion [bash|zsh|fish]`.

use clap::CommandFactory;
use clap_complete::{generate, Shell as S};

use crate::cli::{Cli, CompletionArgs, Shell};

pub fn run(a: CompletionArgs) -> anyhow::Result<()> {
    let shell = match a.shell {
        Shell::Bash => S::Bash,
        Shell::Zsh => S::Zsh,
        Shell::Fish => S::Fish,
    };
    generate(shell, &mut Cli::command(), "ignite", &mut std::io::stdout());
    Ok(())
}
