//! Mail in and out: composing MIME messages and handing them to SMTP or a file outbox.

pub mod body;
pub mod classify;
pub mod compose;
pub mod oauth;
pub mod send;
pub mod smtp;
pub mod text;
pub mod tls;
pub mod watch;
