//! Use cases: what the command line, the daemon and (later) the HTTP API call. Each
//! reads what it needs from the store, asks the engine what changes, and hands the
//! store the engine's decision to persist as computed.

pub mod operate;
pub mod rules;
