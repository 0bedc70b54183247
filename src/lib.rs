//! followup: a self-hosted email outreach and follow-up daemon.
//!
//! The pure core (`sequence`, `template`, `schedule`, `engine`) does no I/O; `store`
//! is the only module that speaks SQL; `mail` composes and sends; `scheduler` runs the
//! send loop; `track` signs tracking and unsubscribe tokens; `daemon` wires tasks and
//! signals; `cli` is the command line.

// Errors here carry a diagnostic or a prepared outcome by value: they are produced on
// cold paths (a bad config line, a held enrollment), where boxing buys nothing.
#![allow(clippy::result_large_err)]

pub mod address;
pub mod app;
pub mod cli;
pub mod config;
pub mod contacts;
pub mod daemon;
pub mod diagnostic;
pub mod engine;
pub mod inbound;
pub mod init;
pub mod mail;
pub mod model;
pub mod ops;
pub mod project;
pub mod rules;
pub mod schedule;
pub mod scheduler;
pub mod sequence;
pub mod store;
pub mod template;
pub mod track;
pub mod webhook;
