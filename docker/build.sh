#!/usr/bin/env bash
# Build the project's images with the names and tags the Helm chart uses by default.
#
#   docker/build.sh [controller|trainer|all]        (default: all)
#   BUILDER=buildah docker/build.sh controller      (any CLI with `build -f -t`, e.g. podman)
#   REGISTRY=registry.example.com/team docker/build.sh
#
# Tags are the project version from pyproject.toml, which is also the chart's appVersion.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILDER=${BUILDER:-docker}
REGISTRY=${REGISTRY:-}
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
PREFIX=${REGISTRY:+$REGISTRY/}nas-bohb

build() {
    local name=$1
    echo "Building ${PREFIX}/${name}:${VERSION} from docker/${name}.Dockerfile"
    "$BUILDER" build -f "docker/${name}.Dockerfile" -t "${PREFIX}/${name}:${VERSION}" .
}

case "${1:-all}" in
    controller | trainer) build "$1" ;;
    all) build controller && build trainer ;;
    *) echo "usage: $0 [controller|trainer|all]" >&2; exit 2 ;;
esac
