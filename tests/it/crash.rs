//! Killed at random moments and restarted, the daemon sends no step twice and skips
//! none, apart from messages the store marks in doubt.
