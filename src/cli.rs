//! The command line, split as ripgrep splits its flags: definitions (`flags`), their resolution
//! into library settings (`resolve`), and one file per command. `main.rs` only dispatches.

pub mod analyze;
pub mod daemon;
pub mod eval;
pub mod flags;
pub mod log;
pub mod models;
pub mod resolve;
pub mod verify;
