#!/usr/bin/env bash
# Builds the echo-host image from the repository's Dockerfile with this machine's Docker engine.
#
#   docker/build-image.sh [TAG]        (TAG defaults to echo-host:local)
#
# The build base is $BUILD_BASE when set (e.g. rust:1.95-bookworm where the engine can pull it),
# else the local equivalent that docker/make-base-image.sh makes (and reuses once made). Uses the
# classic builder where the buildx plugin (BuildKit's client) is missing; the Dockerfile needs
# neither. Extra arguments after TAG go to `docker build` (e.g. --build-arg CARGO_FEATURES=...).
# The host tests (host/tests/container.rs) build their image with this script.
set -euo pipefail

TAG="${1:-echo-host:local}"
shift || true
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { echo "[build-image $(date +%H:%M:%S)] $*" >&2; }

docker info >/dev/null 2>&1 || { log "ERROR: cannot talk to the Docker engine (\`docker info\` fails)"; exit 1; }
base="${BUILD_BASE:-}"
if [[ -z "$base" ]]; then
    base="$("$ROOT/docker/make-base-image.sh" | tail -n 1)"
fi
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi
log "docker build -t $TAG --build-arg BUILD_BASE=$base $* $ROOT"
started=$SECONDS
docker build --force-rm -t "$TAG" --build-arg "BUILD_BASE=$base" "$@" "$ROOT"
log "built $TAG in $((SECONDS - started)) s: $(docker image inspect -f '{{.Size}}' "$TAG") bytes"

# The build stage (several GB: the target directory) is an untagged image, and every source change
# leaves the previous one behind. Tag this build's stages (the next build's cache) and remove the
# earlier, now dangling, ones: only images of this Dockerfile's stages (label
# wasm-echo.build-stage), never anything else. The newest dangling image of a stage is this
# build's (when a stage was cached, it is still tagged from last time and nothing is dangling).
for stage in skeleton build; do
    cache_tag="${TAG%:*}-$stage-stage:${TAG##*:}"
    [[ "$TAG" == *:* ]] || cache_tag="$TAG-$stage-stage:latest"
    newest="$(docker images -q --filter "label=wasm-echo.build-stage=$stage" --filter dangling=true | head -n 1)"
    if [[ -n "$newest" ]]; then
        docker tag "$newest" "$cache_tag"
    fi
done
docker image prune -f --filter label=wasm-echo.build-stage >&2
