//! The per-VM supervisor, `ignite-spawn` (Weave Ignite's ignite-spawn, without a container):
//! it runs one VM's VMM through its backend (`supervise`), directly or in a jail
//! (`launch`, and the jailer in `jail`), owns its serial console (`console`) and multiplexes
//! its guest agent (`mux`). `ignite` starts it (`ignite_runtime::start`) and never links it.

pub mod console;
pub mod jail;
pub mod launch;
pub mod mux;
pub mod supervise;
