//! Layer 6, `cli`: the command line (flags, env vars, defaults, validation into a serve
//! configuration), `push`, `fleet`, `release` and `compile`.

pub mod compile;
pub mod config;
pub mod push;
pub mod release_cli;
pub mod release_summary;
