//! `ignite man --out DIR`: one roff man page per command.

use anyhow::Context as _;
use clap::CommandFactory;

use crate::cli::{Cli, ManArgs};

pub fn run(a: ManArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let cmd = Cli::command();
    write(&cmd, "ignite", &a.out)?;
    Ok(())
}

fn write(cmd: &clap::Command, name: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone().name(name.to_string())).render(&mut buf)?;
    std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        write(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}
