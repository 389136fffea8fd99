//! ignite's guest agent: the wire protocol shared by the agent and the host
//! ([`proto`]) and the file-copy payload format ([`archive`]). The agent binary itself is
//! `src/main.rs`; the host side (the per-VM multiplexer and the client) lives in
//! `ignite-runtime`'s `agent` module.

pub mod archive;
pub mod flow;
pub mod proto;
