//! The echo component: answers every request the way the seed's Flask app does, as a pure
//! `wasi:http/proxy` component that any proxy host (ours, `wasmtime serve`, Spin) can run.
//!
//! # Layout
//! - [`echo`]: what to answer (which echo, JSON or text, lengths, rejections); no I/O.
//! - [`query`]: Werkzeug's query-string parsing and `MultiDict` order.
//! - [`pyrepr`]: Python's `repr` of strings and of an `ImmutableMultiDict`.
//! - [`json`]: the JSON echo document, string escaping, base64.
//! - `component` (wasm32 only): the bindings and the `incoming-handler` export, which streams bodies.
//! - `runtime` (wasm32 only): allocator, `cabi_realloc` and panic handler for `no_std`.
//!
//! On wasm32 the crate is `no_std`: Rust's std for `wasm32-wasip2` links wasi-libc, which imports
//! `wasi:cli/environment`, `exit` and `terminal-*`, interfaces outside the proxy world that plain
//! `wasmtime serve` does not provide. Natively it keeps std so tests and clippy run as usual.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

pub mod echo;
pub mod json;
pub mod pyrepr;
pub mod query;

#[cfg(target_arch = "wasm32")]
mod component;
#[cfg(target_arch = "wasm32")]
mod runtime;
