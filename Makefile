# The two commands of the README: `make run` and `make test`. Everything else is a step of theirs.
WASM_TARGET := wasm32-wasip2
GUEST_WASM  := target/$(WASM_TARGET)/guest-release/echo_guest.wasm

.PHONY: run test test-container setup build guest lint unit-and-integration

## Run the service on $PORT (default 8080) with the built-in echo component. ARGS="..." adds flags.
run: build
	./target/release/echo-host $(ARGS)

## Every test: formatting, lints (host and guest), unit tests, integration tests (which install the
## pinned `wasmtime` CLI and a Flask venv under target/ on first use).
test: setup lint unit-and-integration

setup:
	rustup target add $(WASM_TARGET)

build: setup
	cargo build --release -p echo-host

## The echo component alone, as a .wasm for `wasmtime serve` or any wasi:http/proxy host.
guest: setup
	cargo build -p echo-guest --target $(WASM_TARGET) --profile guest-release
	@ls -l $(GUEST_WASM)

lint: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p echo-guest --target $(WASM_TARGET) -- -D warnings

unit-and-integration: setup
	cargo test --workspace --no-fail-fast

## The container tests (Dockerfile, SIGTERM, a three-instance fleet): they build the image from a
## locally made base (docker/make-base-image.sh), which takes many minutes the first time.
test-container: setup
	cargo test -p echo-host --test tests container -- --include-ignored --nocapture
