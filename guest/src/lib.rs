//! The echo component: answers every request the way the seed's Flask app does, as a pure
//! `wasi:http/proxy` component that any proxy host (ours, `wasmtime serve`, Spin) can run.
//!
//! # Layout
//! - [`echo`], [`query`], [`pyrepr`], [`json`]: what to answer and how it is formatted, re-exported
//!   from `echo-core` (`guest/core`), which the p3 build (`echo-guest-p3`) shares; on wasm32 that
//!   crate also brings the `no_std` runtime (allocator, `cabi_realloc`, panic handler).
//! - `component` (wasm32 only): the bindings and the `incoming-handler` export, which streams bodies.
//!
//! On wasm32 the crate is `no_std`: Rust's std for `wasm32-wasip2` links wasi-libc, which imports
//! `wasi:cli/environment`, `exit` and `terminal-*`, interfaces outside the proxy world that plain
//! `wasmtime serve` does not provide. Natively it keeps std so tests and clippy run as usual.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

pub use echo_core::{echo, json, pyrepr, query};

#[cfg(target_arch = "wasm32")]
mod component;
