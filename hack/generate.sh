#!/usr/bin/env bash
# Regenerates the committed generated code: bpf2go bindings (needs clang) and
# protobuf/gRPC code (needs protoc). With --verify, fails if anything differs
# from what is committed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
verify=${1:-}
if command -v clang >/dev/null; then
  go generate ./bpf/...
else
  echo "clang not installed: bpf bindings not regenerated" >&2
  [ "$verify" = --verify ] && [ "${CI:-}" = true ] && { echo "CI needs clang" >&2; exit 1; }
fi
if command -v protoc >/dev/null; then
  go generate ./api/...
else
  echo "protoc not installed: protobuf code not regenerated" >&2
  [ "$verify" = --verify ] && [ "${CI:-}" = true ] && { echo "CI needs protoc" >&2; exit 1; }
fi
if [ "$verify" = --verify ]; then
  if ! git diff --exit-code --stat -- bpf api; then
    echo "generated code is stale: run make generate and commit" >&2
    exit 1
  fi
  echo "generated code is up to date"
fi
