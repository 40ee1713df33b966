//! The echo component for WASI 0.3: the same answers as `echo-guest`, byte for byte, as a pure
//! `wasi:http/service@0.3.0` component (`handler.handle` is an `async func`, bodies are
//! `stream<u8>`), for p3 hosts (`wasmtime serve -Wcomponent-model-async -Sp3`).
//!
//! # Layout
//! - `component` (wasm32 only): the p3 bindings and the `handler` export, which moves the bytes.
//! - Everything else comes from `echo-core` (`guest/core`), shared with the p2 echo: what to answer
//!   ([`echo_core::echo`]), the query parsing, the Python reprs, the JSON document, and on wasm32
//!   the `no_std` runtime (allocator, `cabi_realloc`, `memcmp`, panic handler), linked in from there.
//!
//! On wasm32 the crate is `no_std` for the same reason as `echo-guest`: std's wasi-libc would import
//! `wasi:cli/environment` and friends. wit-bindgen's async runtime needs no std on `wasm32-wasip2`.
//! Natively the crate is empty, so `cargo clippy --workspace --all-targets` builds it.
#![cfg_attr(target_arch = "wasm32", no_std)]

#[cfg(target_arch = "wasm32")]
extern crate alloc;

#[cfg(target_arch = "wasm32")]
mod component;
