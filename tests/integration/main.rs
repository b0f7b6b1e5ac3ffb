//! Integration tests: real processor components (the built-in `compress`,
//! the misbehaving `rogue`, and the Python, JavaScript and Rust examples)
//! run by the real runtime against the real local backends, and the `wasq`
//! binary run as a user would.

mod alerts;
mod aws;
mod browser;
mod cli;
mod compress;
mod console;
mod dispatch;
mod docs;
mod examples;
mod extended;
mod harness;
mod hostile;
mod links;
mod reliability;
mod reload;
mod s3;
mod sandbox;
