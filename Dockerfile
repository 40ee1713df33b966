# echo-host for Cloud Run (or any container platform): a static musl `echo-host`, CA certificates and
# the echo component precompiled for it, in an image built from scratch that runs as a non-root user.
#
#   docker build -t echo-host .
#   docker run --rm -p 8080:8080 echo-host          # curl 'localhost:8080/?name=world'
#
# Where the engine cannot pull `rust:1.95-bookworm` (no registry), make a local equivalent first:
#   docker/make-base-image.sh
#   docker build --build-arg BUILD_BASE=wasm-echo-build-base:1.95 -t echo-host .
#
# Build args:
#   BUILD_BASE      the Rust build image (Debian-based with rustup; musl-tools are added if missing)
#   CARGO_FEATURES  cargo features of `echo-host`, comma-separated ("mimalloc" by default: musl's malloc is slow
#                   under load; set it empty for musl's own)
#
# Works with BuildKit and with the classic builder (no `RUN --mount`). Crates are fetched from
# crates.io during the build, in a layer of their own; the dependencies are compiled against stub
# sources in another, so a change to the project's own code rebuilds only its own crates.
ARG BUILD_BASE=rust:1.95-bookworm

# The workspace reduced to what decides its dependencies: every Cargo.toml, Cargo.lock, the
# toolchain file and the build scripts, with each crate's sources replaced by empty stubs (what
# cargo-chef does, without installing it). Nothing here names the workspace's members.
FROM ${BUILD_BASE} AS skeleton
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
WORKDIR /src
COPY . .
RUN mkdir /skeleton; \
    cp Cargo.lock rust-toolchain.toml /skeleton/; \
    stub() { mkdir -p "/skeleton/$(dirname "$1")"; \
        if grep -qE '^\s*(pub\s+)?(async\s+)?fn\s+main\s*\(' "$1"; then echo 'fn main() {}' >"/skeleton/$1"; \
        else : >"/skeleton/$1"; fi; }; \
    find . -name Cargo.toml -not -path './target/*' | sort | while read -r manifest; do \
        dir="$(dirname "$manifest")"; \
        mkdir -p "/skeleton/$dir"; cp "$manifest" "/skeleton/$manifest"; \
        if [[ -f "$dir/build.rs" ]]; then cp "$dir/build.rs" "/skeleton/$dir/build.rs"; fi; \
        for src in "$dir/src/lib.rs" "$dir/src/main.rs" "$dir"/src/bin/*.rs; do \
            if [[ -f "$src" ]]; then stub "$src"; fi; \
        done; \
        sed -nE 's/^\s*path\s*=\s*"([^"]+\.rs)".*/\1/p' "$manifest" | while read -r path; do \
            if [[ -f "$dir/$path" && ! -e "/skeleton/$dir/$path" ]]; then stub "$dir/$path"; fi; \
        done; \
    done; \
    find /skeleton -type f | sort
# Marks this stage's images, so that docker/build-image.sh can remove earlier builds' leftovers.
LABEL wasm-echo.build-stage=skeleton

FROM ${BUILD_BASE} AS build
ARG CARGO_FEATURES="mimalloc"
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
WORKDIR /src
ENV CARGO_TERM_COLOR=never CARGO_INCREMENTAL=0 CARGO_NET_RETRY=5

# The C parts of dependencies (ring) need a musl C compiler for the static target.
RUN if ! command -v musl-gcc >/dev/null; then \
        apt-get update -q && apt-get install -y -q --no-install-recommends musl-tools \
        && rm -rf /var/lib/apt/lists/*; \
    fi; \
    musl-gcc --version | head -n 1

# The pinned toolchain (rust-toolchain.toml, with its components), the static target and the
# guest's target.
COPY rust-toolchain.toml ./
RUN rustup show active-toolchain || rustup toolchain install; \
    rustup target add x86_64-unknown-linux-musl wasm32-wasip2; \
    cargo --version

# Dependencies: the skeleton, fetched and compiled. The COPY hashes the skeleton's content, which
# does not change when only the project's code does, so these layers stay cached.
COPY --from=skeleton /skeleton/ ./
RUN cargo fetch --locked
RUN cargo build --release --locked --offline --target x86_64-unknown-linux-musl -p echo-host \
        ${CARGO_FEATURES:+--features "$CARGO_FEATURES"}

# The project's own code, then the echo component precompiled by the very binary that will load it
# (the same engine settings). Touch the sources first: COPY keeps the files' older mtimes, and cargo
# would take the stub builds above for up to date.
COPY . .
RUN find . -path ./target -prune -o -type f -exec touch {} +; \
    cargo build --release --locked --offline --target x86_64-unknown-linux-musl -p echo-host \
        ${CARGO_FEATURES:+--features "$CARGO_FEATURES"}; \
    mkdir -p /out; \
    cp target/x86_64-unknown-linux-musl/release/echo-host /out/echo-host; \
    objcopy --strip-debug /out/echo-host; \
    cp target/wasm/wasm32-wasip2/guest-release/echo_guest.wasm /out/echo.wasm; \
    /out/echo-host compile /out/echo.wasm -o /out/echo.cwasm; \
    chmod 0755 /out/echo-host; chmod 0644 /out/echo.cwasm /out/echo.wasm; \
    ls -l /out; \
    if readelf -d /out/echo-host | grep -q NEEDED; then echo "echo-host is not static" >&2; exit 1; fi
LABEL wasm-echo.build-stage=build

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/echo-host /echo-host
COPY --from=build /out/echo.cwasm /out/echo.wasm /srv/
# 65532 is the conventional "nonroot" user of distroless images; no passwd file is needed.
USER 65532:65532
# The baked-in component is precompiled (/srv/echo.cwasm), so it needs --allow-precompiled.
# `echo-host compile` emits only instructions every x86-64 server CPU since Haswell has (no AVX-512),
# so the image runs wherever it lands; on an older CPU, run the same component as a .wasm, compiled
# at start-up: ECHO_HOST_COMPONENT=/srv/echo.wasm ECHO_HOST_ALLOW_PRECOMPILED=false
# Pointing ECHO_HOST_COMPONENT at a .wasm elsewhere (a bucket mount) should likewise set
# ECHO_HOST_ALLOW_PRECOMPILED=false (see deploy/service.yaml). The poll interval stays at the host's
# default (2 s): for the baked-in file that is a stat every 2 s, and a mounted component is then
# watched without further settings.
# mimalloc commits its arenas eagerly by default: measured 24.6 MiB RSS under load in this image
# against 13.6 MiB when it commits on demand, at the same requests/s.
ENV ECHO_HOST_COMPONENT=/srv/echo.cwasm \
    ECHO_HOST_ALLOW_PRECOMPILED=true \
    MIMALLOC_ARENA_EAGER_COMMIT=0 \
    PORT=8080
EXPOSE 8080
ENTRYPOINT ["/echo-host"]
