#!/usr/bin/env bash
# Removes what tests, the demo or an interrupted run may have left: network
# namespaces named cmt-* and cme-* (tests) and cmd-* (demo), links named cmt*/cme*/cmd*, bpffs
# mounts under /run/clustermesh-test, and processes started from bin/ or the
# kube binary cache, and the install test's (e2e/kubenode) containerd shims
# and their pods (their -address is under /run/clustermesh-test/kube-*).
set -u
for shim in $(pgrep -f 'containerd-shim-runc-v2 .*-address /run/clustermesh-test/kube-' 2>/dev/null); do
  pkill -9 -P "$shim" 2>/dev/null
  kill -9 "$shim" 2>/dev/null
done
# Pod namespaces of the install test's containerd 1.6 (it ignores
# netns_mounts_under and names them cni-*): only those with no process left,
# and only while no kubelet runs on this machine.
if ! pgrep -x kubelet >/dev/null 2>&1; then
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^cni-'); do
    [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && ip netns delete "$ns" 2>/dev/null
  done
fi
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^(cmt|cme|cmd)-'); do
  ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
  ip netns delete "$ns" 2>/dev/null
done
for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^(cmt|cme|cmd)'); do
  ip link delete "$l" 2>/dev/null
done
pkill -f '/clustermesh/kube-v[^ ]*/kube(-apiserver|-controller-manager|-scheduler|-proxy|let) ' 2>/dev/null
grep ' /run/clustermesh-test' /proc/mounts 2>/dev/null | awk '{print $2}' | sort -r | xargs -r -n1 umount 2>/dev/null
# The install test's node state (containerd roots, kubelet dirs), once unmounted.
grep -q ' /run/clustermesh-test/kube-' /proc/mounts || rm -rf /run/clustermesh-test/kube-* 2>/dev/null
find /var/log/containers -maxdepth 1 -lname '/tmp/clustermesh-e2e-*' -delete 2>/dev/null
rmdir /var/log/containers 2>/dev/null
find /run/clustermesh-test -mindepth 1 -depth -type d -empty -delete 2>/dev/null
exit 0
