//! Mail in and out: composing MIME messages and handing them to SMTP or a file outbox.

pub mod compose;
pub mod send;
