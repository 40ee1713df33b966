#!/usr/bin/env bash
# Makes the local stand-in for the public `rust:1.95-bookworm` image, for machines whose Docker
# engine cannot pull images (no registry reachable), so that the real Dockerfile builds with
#   docker build --build-arg BUILD_BASE=wasm-echo-build-base:1.95 .
#
# Two images, each built only when it is missing (the script is idempotent):
#   1. wasm-echo-debian-rootfs:bookworm  a Debian bookworm minbase made by `debootstrap` from the
#      Debian mirror, with build-essential, ca-certificates, curl, musl-tools and pkg-config, turned
#      into an image by `docker import` (needs root for debootstrap; uses sudo when not root).
#   2. wasm-echo-build-base:1.95        (1) plus rustup with Rust 1.95.0 (minimal profile, as the
#      official image) and the targets x86_64-unknown-linux-musl and wasm32-wasip2, laid out like
#      the official image: RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo.
#
# Needs: docker, network to the Debian mirror and static.rust-lang.org. Env overrides:
#   BASE_IMAGE (the result's tag), DEBIAN_SUITE, DEBIAN_MIRROR, RUST_VERSION, FORCE=1 (rebuild both),
#   TRUST_HOST_CAS=0 (do not copy extra root CAs from HOST_CA_BUNDLE, see below).
# Prints the image name as its last line of output on stdout.
set -euo pipefail

RUST_VERSION="${RUST_VERSION:-1.95.0}"
BASE_IMAGE="${BASE_IMAGE:-wasm-echo-build-base:${RUST_VERSION%.*}}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ROOTFS_IMAGE="wasm-echo-debian-rootfs:${DEBIAN_SUITE}"
HOST_CA_BUNDLE="${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
PACKAGES="build-essential,ca-certificates,curl,musl-tools,pkg-config,xz-utils"

log() { echo "[make-base-image $(date +%H:%M:%S)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
started=$SECONDS

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker engine (\`docker info\` fails)"

if [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "$BASE_IMAGE exists already; nothing to do (FORCE=1 rebuilds it)"
    echo "$BASE_IMAGE"
    exit 0
fi

# One build at a time on this machine (the images are the engine's, shared by every checkout):
# `make test` starts this script in the background early on, and the container tests run it again
# through docker/build-image.sh; the second waits here for the first, then finds the image made.
if command -v flock >/dev/null; then
    lock_file="${TMPDIR:-/tmp}/wasm-echo-make-base-image.lock"
    exec 9>>"$lock_file"
    if ! flock -n 9; then
        log "another make-base-image.sh is running; waiting for it ($lock_file)"
        flock 9
    fi
    if [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "$BASE_IMAGE was made meanwhile; nothing to do"
        echo "$BASE_IMAGE"
        exit 0
    fi
fi

SUDO=()
if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null || die "debootstrap needs root: run as root or install sudo"
    SUDO=(sudo)
fi

# --- 1. the Debian root file system, as an image -------------------------------------------------
if [[ "${FORCE:-0}" == 1 ]] || ! docker image inspect "$ROOTFS_IMAGE" >/dev/null 2>&1; then
    if ! command -v debootstrap >/dev/null && [[ ! -x /usr/sbin/debootstrap ]]; then
        log "installing debootstrap (apt-get)"
        "${SUDO[@]}" apt-get update -q || die "apt-get update failed"
        "${SUDO[@]}" apt-get install -y -q debootstrap || die "apt-get install debootstrap failed"
    fi
    DEBOOTSTRAP="$(command -v debootstrap || echo /usr/sbin/debootstrap)"
    workdir="$(mktemp -d "${TMPDIR:-/var/tmp}/wasm-echo-rootfs.XXXXXX")"
    # shellcheck disable=SC2064
    trap "log 'removing $workdir'; ${SUDO[*]} rm -rf '$workdir'" EXIT
    log "debootstrap --variant=minbase $DEBIAN_SUITE from $DEBIAN_MIRROR into $workdir/rootfs (a few minutes)"
    "${SUDO[@]}" "$DEBOOTSTRAP" --variant=minbase --include="$PACKAGES" \
        "$DEBIAN_SUITE" "$workdir/rootfs" "$DEBIAN_MIRROR" >"$workdir/debootstrap.log" 2>&1 \
        || { tail -n 30 "$workdir/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
    log "debootstrap done ($((SECONDS - started)) s); trimming caches"
    "${SUDO[@]}" tee "$workdir/rootfs/etc/apt/sources.list" >/dev/null <<SOURCES
deb $DEBIAN_MIRROR $DEBIAN_SUITE main
deb $DEBIAN_MIRROR $DEBIAN_SUITE-updates main
deb ${DEBIAN_MIRROR%/debian}/debian-security $DEBIAN_SUITE-security main
SOURCES
    "${SUDO[@]}" rm -rf "$workdir/rootfs/var/cache/apt/archives/"*.deb "$workdir/rootfs/var/lib/apt/lists/"* \
        "$workdir/rootfs/var/log/"*.log "$workdir/rootfs/usr/share/doc" "$workdir/rootfs/usr/share/man"
    # A fresh image must not inherit this machine's resolver or hostname.
    "${SUDO[@]}" rm -f "$workdir/rootfs/etc/resolv.conf" "$workdir/rootfs/etc/hostname"
    log "docker import -> $ROOTFS_IMAGE"
    "${SUDO[@]}" tar -C "$workdir/rootfs" --numeric-owner -c . \
        | docker import \
            -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            -c 'ENV LANG=C.UTF-8' \
            -c 'CMD ["bash"]' \
            - "$ROOTFS_IMAGE" >/dev/null \
        || die "docker import failed"
    "${SUDO[@]}" rm -rf "$workdir"
    trap - EXIT
    log "$ROOTFS_IMAGE ready ($((SECONDS - started)) s)"
else
    log "$ROOTFS_IMAGE exists already; reusing it"
fi

# --- 2. rustup and the toolchain, on top --------------------------------------------------------
log "building $BASE_IMAGE: rustup, Rust $RUST_VERSION, targets x86_64-unknown-linux-musl wasm32-wasip2"
context="$(mktemp -d "${TMPDIR:-/tmp}/wasm-echo-base-ctx.XXXXXX")"
trap 'rm -rf "$context"' EXIT
# A machine behind a TLS-inspecting proxy trusts an extra root CA that Debian's bundle lacks; the
# build containers need it too (curl, rustup, cargo all verify TLS). Carry over every certificate in
# the host's bundle that the image's bundle does not have (none on an ordinary machine).
# TRUST_HOST_CAS=0 turns this off.
mkdir -p "$context/extra-ca"
if [[ "${TRUST_HOST_CAS:-1}" == 1 && -r "$HOST_CA_BUNDLE" ]]; then
    docker run --rm "$ROOTFS_IMAGE" cat /etc/ssl/certs/ca-certificates.crt >"$context/image-bundle.pem" \
        || die "cannot read the CA bundle of $ROOTFS_IMAGE"
    awk -v out="$context/extra-ca" '
        FNR == 1 { file++ }
        /-----BEGIN CERTIFICATE-----/ { pem = ""; key = ""; inside = 1 }
        inside { pem = pem $0 "\n"; line = $0; gsub(/[ \t\r]/, "", line); key = key line }
        /-----END CERTIFICATE-----/ {
            inside = 0
            if (file == 1) { known[key] = 1 }
            else if (!(key in known)) { n++; printf "%s", pem > (out "/host-extra-" n ".crt") }
        }' "$context/image-bundle.pem" "$HOST_CA_BUNDLE" || die "comparing CA bundles failed"
    extra_count="$(ls "$context/extra-ca" | wc -l)"
    if [[ "$extra_count" -gt 0 ]]; then
        log "adding $extra_count CA certificate(s) that $HOST_CA_BUNDLE trusts and Debian's bundle lacks (TLS-inspecting proxy?)"
    fi
fi
cat >"$context/Dockerfile" <<DOCKERFILE
FROM $ROOTFS_IMAGE
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:\$PATH \\
    RUST_VERSION=$RUST_VERSION
RUN set -eux; \\
    curl --proto '=https' --tlsv1.2 -sSfL --retry 3 -o /tmp/rustup-init \\
        https://static.rust-lang.org/rustup/dist/x86_64-unknown-linux-gnu/rustup-init; \\
    chmod +x /tmp/rustup-init; \\
    /tmp/rustup-init -y --no-modify-path --profile minimal --default-toolchain \$RUST_VERSION \\
        --target x86_64-unknown-linux-musl --target wasm32-wasip2; \\
    rm /tmp/rustup-init; \\
    chmod -R a+w \$RUSTUP_HOME \$CARGO_HOME; \\
    rustup --version; cargo --version; rustc --version; rustup target list --installed
DOCKERFILE
# BuildKit needs the buildx plugin on current clients; the classic builder does for this file.
if ! docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=0; fi
docker build --force-rm --label org.opencontainers.image.description="local stand-in for rust:${RUST_VERSION%.*}-bookworm (echo-host docker/make-base-image.sh)" \
    -t "$BASE_IMAGE" "$context" >&2 || die "docker build of $BASE_IMAGE failed (output above)"
log "$BASE_IMAGE ready in $((SECONDS - started)) s: $(docker image inspect -f '{{.Size}}' "$BASE_IMAGE") bytes"
echo "$BASE_IMAGE"
