//! VM lifecycle orchestration: the library every ignite binary links, tying the object model,
//! the store, images, disks, networks and VMM backends together. One module per verb
//! (`create`, `start`, `stop`, `remove`, `run`), and what they share with the supervisor
//! (`ignite-supervisor`) and the daemon (`ignite-daemon`), which live in crates of their own.

pub mod agent;
pub mod boot;
pub mod cgroup;
pub mod clone_ssh;
pub mod config;
pub mod create;
pub mod doctor;
pub mod errors;
pub mod gc;
pub mod held;
pub mod host;
pub mod import;
pub mod jail;
pub mod lease;
pub mod network;
pub mod preflight;
pub mod provision;
pub mod recover;
pub mod remove;
pub mod rootdisk;
pub mod run;
pub mod snapshot;
pub mod ssh;
pub mod start;
pub mod start_error;
pub mod status;
pub mod stop;
pub mod sys;
pub mod vmdir;

pub use config::{load_configuration, ConfigError, ConfigSource, LoadedConfig, DEFAULT_CONFIG_PATH};
pub use create::{create_vm, CreateError, CreateOptions, PullPolicy};
pub use remove::{remove_vm, RemoveError};
