//! The properties the fuzz targets check, one function per target. The same files are compiled
//! into the corpus replay tests (`guest/core/tests/fuzz_corpus.rs`, `host/tests/fuzz_corpus.rs`),
//! so `make test` runs every committed corpus input through exactly these checks.

#[path = "../checks/guest.rs"]
pub mod guest;

#[cfg(feature = "host")]
#[path = "../checks/host.rs"]
pub mod host;
