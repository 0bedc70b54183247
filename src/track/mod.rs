//! Open and click tracking and unsubscribe links. `token` signs and checks the tokens
//! that tracking and unsubscribe URLs carry; the HTTP endpoint that serves them builds
//! on it.

pub mod links;
pub mod token;
