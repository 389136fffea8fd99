//! What every command needs: the store, the configuration, and global flags.

use anyhow::Context as _;
use ignite_runtime::{load_configuration, ConfigSource, LoadedConfig};
use ignite_store::Store;

use crate::cli::Global;

pub struct Ctx {
    pub global: Global,
}

impl Ctx {
    pub fn store(&self) -> anyhow::Result<Store> {
        Store::open(&self.global.root).with_context(|| {
            format!("cannot open the state directory {} (set --root or IGNITE_ROOT)", self.global.root.display())
        })
    }

    /// The daemon to work through, if any (see `remote::choose`).
    pub fn daemon(&self) -> anyhow::Result<Option<crate::remote::Daemon>> {
        crate::remote::choose(self.global.daemon.as_deref(), &self.global.root)
    }

    /// Every VM with its live status, from the daemon or the store.
    pub fn list_vms(&self) -> anyhow::Result<Vec<ignite_api::Vm>> {
        match self.daemon()? {
            Some(d) => d.list(),
            None => Ok(ignite_runtime::status::list(&self.store()?)?),
        }
    }

    /// The configuration file's settings, with the global flags that override them
    /// (`--id-prefix`).
    pub fn config(&self) -> anyhow::Result<LoadedConfig> {
        let mut c = load_configuration(self.global.ignite_config.as_deref())?;
        if let Some(p) = &self.global.id_prefix {
            if p.is_empty()
                || p.len() > 32
                || !p.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
            {
                return Err(crate::usage::UsageError(format!(
                    "invalid --id-prefix {p:?}: use 1 to 32 lowercase letters, digits and '-'"
                ))
                .into());
            }
            c.spec.id_prefix = p.clone();
        }
        match &c.source {
            ConfigSource::Defaults => tracing::debug!("using ignite default configurations"),
            ConfigSource::DefaultFile(p) => tracing::debug!("using ignite configuration file {}", p.display()),
            ConfigSource::Explicit(p) => tracing::debug!("using ignite configuration file {}", p.display()),
        }
        Ok(c)
    }
}
