#!/usr/bin/env bash
# Shared set-up of make test, make demo and .ci/run: installs the Debian
# packages the tests and the demo need when one of them is missing (as root;
# it says what it installs), and fails naming what is still missing
# otherwise. Pass --check to only check (nothing installed).
set -euo pipefail

# package:command pairs; a package is needed when its command is missing.
# libprotobuf-dev holds the well-known types (timestamp.proto) protoc needs.
# nftables stands in for kube-proxy's and a primary CNI's rules in the
# coexistence tests. containerd, runc, the CNI plugins and iptables run the
# install test's real kubelet nodes; tcpdump captures its traffic when a
# traffic step fails.
needs=(
  clang:clang
  llvm:llvm-strip
  libbpf-dev:/usr/include/bpf/bpf_helpers.h
  bpftool:bpftool
  iproute2:ip
  iputils-ping:ping
  protobuf-compiler:protoc
  libprotobuf-dev:/usr/include/google/protobuf/timestamp.proto
  nftables:nft
  util-linux:nsenter
  mount:mount
  containerd:containerd
  runc:runc
  containernetworking-plugins:/usr/lib/cni/ptp
  iptables:iptables
  tcpdump:tcpdump
)

missing=()
for pair in "${needs[@]}"; do
  pkg=${pair%%:*}
  what=${pair#*:}
  if [[ $what == /* ]]; then
    [ -e "$what" ] && continue
  else
    command -v "$what" >/dev/null 2>&1 && continue
  fi
  missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "${1:-}" = "--check" ] || [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: missing Debian packages: ${missing[*]} (run hack/setup.sh as root on Debian to install them)" >&2
  exit 1
fi
echo "setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: installed ${missing[*]}" >&2
