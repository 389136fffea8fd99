//! VM lifecycle orchestration: the only crate that ties the object model, the store and
//! (as they arrive) images, networking and VMM backends together. One module per verb.
#![forbid(unsafe_code)]

pub mod config;
pub mod create;
pub mod remove;

pub use config::{load_configuration, ConfigError, ConfigSource, LoadedConfig, DEFAULT_CONFIG_PATH};
pub use create::{create_vm, CreateError};
pub use remove::{remove_vm, RemoveError};
