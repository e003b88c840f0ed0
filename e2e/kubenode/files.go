package kubenode

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// writeFiles writes the node's containerd, CNI, kubeconfig and kubelet
// configuration.
func (n *Node) writeFiles() error {
	c := n.Cluster
	pause := ""
	for _, im := range c.env.cfg.Images {
		if strings.Contains(im.Ref, "pause") {
			pause = im.Ref
		}
	}
	if pause == "" {
		return fmt.Errorf("kubenode: no pause image among %v", c.env.cfg.Images)
	}
	files := map[string]string{
		"containerd.toml": fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = %[3]q
[plugins."io.containerd.internal.v1.opt"]
  path = %[4]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[5]q
  netns_mounts_under = %[6]q
  disable_apparmor = true
  # Never ask for an oom_score_adj below containerd's own (the sandbox's
  # -998 needs CAP_SYS_RESOURCE, which this machine's root lacks: runc then
  # fails with "can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[7]q
`, n.path("containerd/root"), n.path("containerd/state"), n.Socket(), n.path("containerd/opt"),
			pause, n.path("netns"), n.path("cni/net.d")),
		"cni/net.d/10-ptp.conflist": fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "kubenode",
  "plugins": [{
    "type": "ptp",
    "ipMasq": false,
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": %q}]],
      "routes": [{"dst": "0.0.0.0/0"}],
      "dataDir": %q
    }
  }]
}
`, n.PodCIDR, n.path("cni/ipam")),
		"kubeconfig": fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: %[1]s
  cluster:
    server: https://%[2]s
    insecure-skip-tls-verify: true
users:
- name: %[1]s
  user:
    token: %[3]s
contexts:
- name: %[1]s
  context: {cluster: %[1]s, user: %[1]s}
current-context: %[1]s
`, c.Name, c.APIAddr, c.CP.REST.BearerToken),
		// cgroup v1 (this machine's hybrid layout) needs failCgroupV1:
		// false since 1.35; containerd 1.6 has no RuntimeConfig RPC, so the
		// driver comes from here. No QoS cgroups: two kubelets share the
		// host's hierarchy. Eviction and image GC thresholds are set so a
		// full build disk does not evict the test's pods.
		"kubelet.yaml": fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
containerRuntimeEndpoint: unix://%s
address: %s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
localStorageCapacityIsolation: false
resolvConf: ""
serializeImagePulls: false
nodeStatusUpdateFrequency: 5s
podLogsDir: %s
`, n.Socket(), n.IP, filepath.Join(n.logDir, "pods")),
	}
	for name, data := range files {
		if err := os.WriteFile(n.path(name), []byte(data), 0o600); err != nil {
			return err
		}
	}
	return nil
}
