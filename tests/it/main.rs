//! Integration tests: the real `followup` binary against a real SMTP server (aiosmtpd)
//! and real databases (a SQLite file; PostgreSQL from FOLLOWUP_TEST_PG).
//! One test binary, as the style guide asks: `cargo test --test it`.

mod support;

mod check;
mod cli_fixes;
mod crash;
mod http_limits;
mod mailworld;
mod oauth;
mod ops;
mod replies;
mod send;
mod store;
mod tls;
mod track;
mod webhooks;
