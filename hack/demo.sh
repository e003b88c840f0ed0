#!/usr/bin/env bash
# make demo: three meshed local clusters (real kube-apiservers, clustermesh
# apiservers and agents on the eBPF datapath, pods as network namespaces), a
# global service spread over them, a failover (issue 7), and a network policy
# that allows one cross-cluster request and denies another, each with
# `clustermesh-agent policy trace` (issue 15). Needs root.
# Extra flags (e.g. -hold, -keep-logs) via DEMO_ARGS or as arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "make demo: needs root (network namespaces, bpffs, eBPF programs)" >&2
  exit 2
fi
hack/setup.sh
KUBE_BIN_DIR=$(hack/kube-bins.sh)
export KUBE_BIN_DIR
mkdir -p bin
go build -o bin/clustermesh-demo ./e2e/cmd/demo
# shellcheck disable=SC2086
exec bin/clustermesh-demo -kube-bin-dir "$KUBE_BIN_DIR" -repo . ${DEMO_ARGS:-} "$@"
