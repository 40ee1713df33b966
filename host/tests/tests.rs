//! The host's one integration-test binary (ripgrep's layout): helpers in `util`, one module per
//! feature. Every test speaks real HTTP to a real socket.

// Shared helpers: the built components, free ports, peer servers (`wasmtime serve`, Flask).
mod util;

// Docs that cannot drift: links and anchors resolve, the flag table is `--help`, JSON samples have
// a real run's keys.
mod docs;
// The host's layers point one way: no upward import, no circle, `App` only in the composition root.
mod layers;
// The echo component itself: its imports stay in the proxy world, its size, `wit/deps` drift.
mod guest_component;
// The echo component under upstream `wasmtime serve`: every echo behaviour over real HTTP.
mod interop;
// The seed's Flask app and the component side by side on a table of GET queries.
mod flask_parity;
// The host serving components: endpoints, logs, precompiled components, SIGTERM drain.
mod serving;
// Every limit flag hit over real HTTP: deadline, memory, body, concurrency, headers, connections.
mod limits;
// Hostile clients: zero h2 windows, slow readers, trickled bodies, silent and idle connections.
mod hostile;
// Clients that never read: h2 streams behind a zero window, unread pipelined HTTP/1.1, in waves.
mod unread;
// A bad guest never takes the host down: traps, panics, no response, denied fs/env/outbound.
mod guest_failures;
// Every guest failure is one ERROR log line naming its cause: trap, no response, deadline, memory,
// error code, in both worlds.
mod failure_logs;
// Guest resource limits: resource-table entries, header bytes, log lines, in both worlds.
mod guest_limits;
// echo-host and `wasmtime serve` on the same component: same status, type and body.
mod differential;
// Hot swap through the admin API: auth, the validation gate, rollback, swaps under load.
mod swap;
// Signatures in the ecosystem's format: the real `wasmsign2` CLI (embedded, detached, OpenSSH keys)
// against `--trusted-key`, and `echo-host sign --format wasmsign2` checked by `wasmsign2 verify`.
mod signatures;
// Component sources: a watched file and a polled URL, their failure modes, swaps under load.
mod oci;
mod sources;
// Sources hardened: redacted URLs, signed URLs' signatures, transient retries, FIFOs, a watched .cwasm.
mod source_hardening;
// A stalled stdout: log lines dropped and counted, requests and health never wait on it.
mod log_pipe;
// The fleet release store on Cloud Storage (fake-gcs-server): gs:// source, push, rollback, fleet view, faults.
mod store;
// What instances do with what the store holds: whole releases, names checked at start, problems reported, a bounded fleet view.
mod store_follow;
// Frozen instances (Cloud Run's default CPU allocation): SIGSTOP through release changes, the store down at wake-up, asleep in the fleet view.
mod wake;
// The release store under races and bad contents (#33): rollbacks at once, oversized and lost writes,
// reads racing writes, escapes in heartbeats, ambiguous prefixes, trickled uploads, long histories.
mod store_integrity;
// The status page in headless Chromium: nothing without the token, the release, a rollback.
mod status_page;
// `echo-host release start|status|promote|abort`: the real binary against a running host.
mod rollout_cli;
// The container image (Dockerfile) and deploy/service.yaml: Cloud Run contract, SIGTERM, a fleet swap.
mod container;
// WASI 0.3 components: the p3 echo under both servers, instance reuse and its limits, p2/p3 swaps.
mod p3;
// Opt-in serial reuse of p2 instances: up to the limit, retired on a trap, a deadline, a guest
// that runs on or keeps a resource; per-request budgets and log ids; swaps under load.
mod p2_reuse;
// Careless operators and hostile callers: flags past their range, bad `Host`, the admin token, bounded provenance.
mod hardening;
// Progressive delivery: canary weights, sticky keys, pins, per-version telemetry, steps, abort, fleet rollbacks.
mod rollout;
// A canary judged on latency: a slow one rolled back fleet-wide, one as slow as stable promoted.
mod rollout_latency;
// What a version costs: guest CPU per request, instantiation, peak memory, p2 and p3.
mod version_cost;
// The fuzz targets' committed corpora (fuzz/corpus/host_*) replayed through their checks.
mod fuzz_corpus;
// The OCI registry harness (distribution 2.8, oras pushes, the Bearer token flow) proves itself.
mod registry_harness;
// Golden files: `/metrics` and the access log byte for byte for a fixed set of requests (the
// promise of the `host/src` layering refactor: nothing a user sees changes).
mod golden;
// OTLP traces against a real receiver (gRPC and HTTP): spans, parents, attributes, outbound
// `traceparent`; failing collectors cost counted spans, never a response; the shutdown flush.
mod traces;
// `/metrics` read by real parsers: one family per name, `promtool check metrics`, the Python
// OpenMetrics parser, and a real Prometheus scraping a host (#32).
mod exposition;
