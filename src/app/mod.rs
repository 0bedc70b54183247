//! Use cases: what the command line, the daemon and (later) the HTTP API call. Each
//! reads what it needs from the store, asks the engine what changes, and hands the
//! store the engine's decision to persist as computed.

pub mod doubt;
pub mod enroll;
pub mod import;
pub mod operate;
pub mod ports;
pub mod rules;
pub mod status;
pub mod timeline;
pub mod webhooks;
