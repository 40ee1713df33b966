//! `cli-command`: a component of the wrong world for the host. Built for `wasm32-wasip2`, a std `main`
//! becomes a `wasi:cli/command` component that exports `wasi:cli/run` and no
//! `wasi:http/incoming-handler`, so a host that loads it (or a swap to it) must reject it.

fn main() {
    println!("cli-command: a wasi:cli/run component, not a wasi:http/proxy one");
}
