//! Bad command-line input that clap could not catch.

/// Bad command-line input (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
