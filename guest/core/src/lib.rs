//! What the echo answers, decided from plain values, shared by both echo components: `echo-guest`
//! (`wasi:http/proxy@0.2`) and `echo-guest-p3` (`wasi:http/service@0.3`). They only move bytes.
//!
//! # Layout
//! - [`echo`]: what to answer (which echo, JSON or text, lengths, rejections); no I/O.
//! - [`query`]: Werkzeug's query-string parsing and `MultiDict` order.
//! - [`pyrepr`]: Python's `repr` of strings and of an `ImmutableMultiDict`.
//! - [`json`]: the JSON echo document, string escaping, base64.
//! - [`arena`]: the bump arena an instance's first allocations come from.
//! - `runtime` (wasm32 only): allocator (the arena, then dlmalloc), `cabi_realloc`, `memcmp` and
//!   panic handler for `no_std`, linked into whichever component depends on this crate.
//!
//! On wasm32 the crate is `no_std`: Rust's std for `wasm32-wasip2` links wasi-libc, which imports
//! `wasi:cli/environment`, `exit` and `terminal-*`, interfaces outside the proxy (and service) world
//! that plain `wasmtime serve` does not provide. Natively it keeps std so tests and clippy run as
//! usual.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

pub mod arena;
pub mod echo;
pub mod json;
pub mod pyrepr;
pub mod query;

#[cfg(target_arch = "wasm32")]
mod runtime;
