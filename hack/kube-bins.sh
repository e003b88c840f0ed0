#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
# kube-proxy (the last three for the install test on real nodes, e2e/kubenode)
# from the tools/ module into a cache directory that survives between runs, and
# prints that directory. About 11 minutes cold on a 2-core machine for the first
# two, 2 more for the others; a no-op when the binaries exist.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(cd "$root/tools" && go list -m -f "{{.Version}}" k8s.io/kubernetes)
minor=$(echo "$version" | cut -d. -f2)
dir=${KUBE_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/clustermesh/kube-$version}
mkdir -p "$dir"
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
for bin in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
  if [ ! -x "$dir/$bin" ]; then
    echo "building $bin $version into $dir (cold: several minutes)" >&2
    (cd "$root/tools" && go build -trimpath -ldflags "$ldflags" -o "$dir/$bin.tmp" "./cmd/$bin")
    mv "$dir/$bin.tmp" "$dir/$bin"
  fi
done
echo "$dir"
