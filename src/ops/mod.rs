//! Running followup as a service: the systemd notify protocol and watchdog, log
//! formats for the journal and for shippers, reload, the admin listener, backups.

pub mod admin;
pub mod backup;
pub mod credentials;
pub mod logging;
pub mod notify;
pub mod pidfile;
pub mod reload;
