package kubenode

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/clustermesh/clustermesh/e2e/harness"
	"github.com/clustermesh/clustermesh/internal/netns"
)

// Node is a namespace running containerd, a kubelet and kube-proxy.
type Node struct {
	Name       string
	Cluster    *Cluster
	NS         *netns.NS
	IP         netip.Addr
	PodCIDR    netip.Prefix
	Dir        string // StateRoot/kube-<run>/<name>
	BPFFS      string // a bpffs for the agent (chart value agent.bpffsPath)
	AgentState string // the agent's state dir (chart value agent.stateDir)
	Containerd *harness.Process
	Kubelet    *harness.Process
	Proxy      *harness.Process
	logDir     string
}

// Socket is the node's containerd socket.
func (n *Node) Socket() string { return filepath.Join(n.Dir, "containerd.sock") }

func (e *Env) addNode(ctx context.Context, c *Cluster, i int) (*Node, error) {
	n := &Node{
		Name:    fmt.Sprintf("%s-n%d", c.Name, i),
		Cluster: c,
		IP:      netip.AddrFrom4([4]byte{172, 31, 0, byte(10*c.ID + i)}),
		PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(c.ID), byte(i), 0}), 24),
		logDir:  filepath.Join(c.dir, fmt.Sprintf("n%d", i)),
	}
	n.Dir = filepath.Join(e.state, n.Name)
	n.BPFFS = filepath.Join(n.Dir, "bpf")
	n.AgentState = filepath.Join(n.Dir, "agent")
	for _, d := range []string{n.logDir, n.BPFFS, n.AgentState, n.path("cni/net.d"), n.path("netns")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	// Unmount and remove last: containerd's overlays, pod netns, bpffs.
	e.onClose(func() { unmountUnder(n.Dir); _ = os.RemoveAll(n.Dir) })
	var err error
	if n.NS, err = e.newNS(fmt.Sprintf("c%dn%d", c.ID, i)); err != nil {
		return nil, err
	}
	port := fmt.Sprintf("cme-c%dn%d", c.ID, i)
	if err := e.DC.Batch(
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", port, n.NS.Name),
		fmt.Sprintf("link set %s master cme-br up", port)); err != nil {
		return nil, err
	}
	if err := n.NS.Batch("link set lo up", "link set eth0 up",
		fmt.Sprintf("addr add %s/24 dev eth0", n.IP),
		"route add default via "+gateway.String()); err != nil {
		return nil, err
	}
	if out, err := n.NS.Exec("sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		return nil, fmt.Errorf("enable forwarding: %w: %s", err, out)
	}
	// Pods reach whatever lies beyond the node's eth0 (their kube-apiserver,
	// the forwarder on the gateway; other nodes' addresses, such as the
	// other cluster's NodePort) from the node's address, as on a cloud
	// node: the datacenter has no route to pod CIDRs, so traffic between
	// clusters' pods needs the mesh (its tunnel, not eth0).
	if out, err := n.NS.Exec("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", n.PodCIDR.String(),
		"-o", "eth0", "-j", "MASQUERADE"); err != nil {
		return nil, fmt.Errorf("masquerade pods leaving through eth0: %w: %s", err, out)
	}
	// The agent's bpffs, shared so that the chart's Bidirectional mount
	// propagation is allowed and the pins stay visible here for the checks.
	if out, err := exec.Command("mount", "-t", "bpf", "bpf", n.BPFFS).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mount bpffs: %w: %s", err, out)
	}
	if out, err := exec.Command("mount", "--make-shared", n.BPFFS).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("make bpffs shared: %w: %s", err, out)
	}
	if err := n.writeFiles(); err != nil {
		return nil, err
	}
	if err := n.startContainerd(); err != nil {
		return nil, err
	}
	if err := n.importImages(e.cfg.Images); err != nil {
		return nil, err
	}
	if err := n.startKubelet(ctx); err != nil {
		return nil, err
	}
	if err := n.startProxy(); err != nil {
		return nil, err
	}
	return n, nil
}

func (n *Node) path(p string) string { return filepath.Join(n.Dir, p) }

func (n *Node) startContainerd() error {
	var err error
	n.Containerd, err = harness.StartProcess("containerd", filepath.Join(n.logDir, "containerd.log"), n.NS,
		"containerd", "--config", n.path("containerd.toml"))
	if err != nil {
		return err
	}
	env := n.Cluster.env
	// Pods first (their shims outlive containerd), then containerd.
	env.onClose(func() { n.Containerd.Stop(5 * time.Second); killShims(n.Socket()) })
	err = harness.Eventually(30*time.Second, func() error {
		if n.Containerd.Exited() {
			return fmt.Errorf("containerd exited: %s", n.Containerd.LogTail(2000))
		}
		_, err := ctr(n.Socket(), "version")
		return err
	})
	if err != nil {
		return fmt.Errorf("containerd of %s: %w", n.Name, err)
	}
	return nil
}

func (n *Node) importImages(images []Image) error {
	for _, im := range images {
		if _, err := ctr(n.Socket(), "images", "import", im.Archive); err != nil {
			return err
		}
		out, err := ctr(n.Socket(), "images", "ls", "-q")
		if err != nil {
			return err
		}
		if !strings.Contains(string(out), im.Ref+"\n") {
			return fmt.Errorf("import %s: %s not listed: %s", im.Archive, im.Ref, out)
		}
	}
	return nil
}

func (n *Node) startKubelet(ctx context.Context) error {
	var err error
	n.Kubelet, err = harness.StartProcess("kubelet", filepath.Join(n.logDir, "kubelet.log"), n.NS,
		filepath.Join(n.Cluster.env.cfg.KubeBinDir, "kubelet"),
		"--config="+n.path("kubelet.yaml"), "--kubeconfig="+n.path("kubeconfig"),
		"--root-dir="+n.path("kubelet"), "--cert-dir="+n.path("kubelet/pki"),
		"--hostname-override="+n.Name, "--node-ip="+n.IP.String(), "--v=1")
	if err != nil {
		return err
	}
	n.Cluster.env.onClose(func() { n.Kubelet.Stop(5 * time.Second) })
	cs := n.Cluster.CP.Client
	err = harness.Eventually(2*time.Minute, func() error {
		if n.Kubelet.Exited() {
			return fmt.Errorf("kubelet exited: %s", n.Kubelet.LogTail(3000))
		}
		node, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status != corev1.ConditionTrue {
				return fmt.Errorf("node %s not ready: %s", n.Name, cond.Message)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("kubelet of %s (log %s): %w", n.Name, n.Kubelet.Log, err)
	}
	// No node IPAM controller runs: the pod CIDR the CNI config uses is
	// written here, as the agent reads it from the Node.
	patch := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":[%q]}}`, n.PodCIDR, n.PodCIDR)
	if _, err := cs.CoreV1().Nodes().Patch(ctx, n.Name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("set pod CIDR of %s: %w", n.Name, err)
	}
	return nil
}

func (n *Node) startProxy() error {
	c := n.Cluster
	var err error
	n.Proxy, err = harness.StartProcess("kube-proxy", filepath.Join(n.logDir, "kube-proxy.log"), n.NS,
		filepath.Join(c.env.cfg.KubeBinDir, "kube-proxy"),
		"--kubeconfig="+n.path("kubeconfig"), "--hostname-override="+n.Name,
		"--proxy-mode=iptables", fmt.Sprintf("--cluster-cidr=10.%d.0.0/16", c.ID),
		// Conntrack limits and timeouts are host-wide: leave them alone.
		"--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
		"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256", "--v=1")
	if err != nil {
		return err
	}
	c.env.onClose(func() { n.Proxy.Stop(5 * time.Second) })
	// kube-proxy has programmed the Services once the kubernetes Service's
	// chain exists in the node's nat table.
	err = harness.Eventually(time.Minute, func() error {
		if n.Proxy.Exited() {
			return fmt.Errorf("kube-proxy exited: %s", n.Proxy.LogTail(3000))
		}
		out, err := n.NS.Exec("iptables", "-t", "nat", "-S", "KUBE-SERVICES")
		if err != nil {
			return err
		}
		if !strings.Contains(string(out), c.ServiceIP().String()+"/32") {
			return errors.New("kube-proxy has not programmed the kubernetes Service yet")
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("kube-proxy of %s (log %s): %w", n.Name, n.Proxy.Log, err)
	}
	return nil
}

// killShims kills the containerd shims of the containerd at sock and the
// pods' processes under them (shims outlive containerd by design).
func killShims(sock string) {
	for _, pid := range shimPIDs(sock) {
		for _, child := range childPIDs(pid) {
			_ = syscall.Kill(child, syscall.SIGKILL)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func shimPIDs(sock string) []int {
	return ProcessesMatching(func(args []string) bool {
		return strings.Contains(args[0], "containerd-shim") && contains(args, sock)
	})
}

// ProcessesMatching returns the PIDs of the processes whose command line
// (arguments split, at least one) satisfies match.
func ProcessesMatching(match func(args []string) bool) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || len(b) == 0 {
			continue
		}
		if match(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func contains(args []string, s string) bool {
	for _, a := range args {
		if a == s {
			return true
		}
	}
	return false
}

func childPIDs(pid int) []int {
	var out []int
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, append(childPIDs(c), c)...)
			}
		}
	}
	return out
}

// unmountUnder unmounts every mount point below dir, deepest first.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && (f[1] == dir || strings.HasPrefix(f[1], dir+"/")) {
			points = append(points, f[1])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	for _, p := range points {
		_ = syscall.Unmount(p, syscall.MNT_DETACH)
	}
}

// PodLogTail returns the last n bytes of each container log of pod p (the
// kubelet's podLogsDir is in the node's log directory), for failure messages.
func (n *Node) PodLogTail(p *corev1.Pod, nbytes int) string {
	var out strings.Builder
	dir := filepath.Join(n.logDir, "pods", fmt.Sprintf("%s_%s_%s", p.Namespace, p.Name, p.UID))
	files, _ := filepath.Glob(filepath.Join(dir, "*", "*.log"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if len(b) > nbytes {
			b = b[len(b)-nbytes:]
		}
		fmt.Fprintf(&out, "--- %s\n%s", strings.TrimPrefix(f, dir+"/"), b)
	}
	return out.String()
}

// execSeq numbers the exec processes of this test binary (ctr wants an id
// unique per container).
var execSeq atomic.Uint64

// Exec runs args in the first container of pod p on n, as `kubectl exec`
// would, and returns its combined output. It goes through the node's
// containerd (`ctr task exec`), not the kube-apiserver's exec stream to the
// kubelet.
func (n *Node) Exec(p *corev1.Pod, args ...string) ([]byte, error) {
	if len(p.Status.ContainerStatuses) == 0 {
		return nil, fmt.Errorf("exec in pod %s/%s: no container status", p.Namespace, p.Name)
	}
	id, ok := strings.CutPrefix(p.Status.ContainerStatuses[0].ContainerID, "containerd://")
	if !ok {
		return nil, fmt.Errorf("exec in pod %s/%s: container %q is not containerd's", p.Namespace, p.Name, p.Status.ContainerStatuses[0].ContainerID)
	}
	execID := fmt.Sprintf("e2e-exec-%d-%d", os.Getpid(), execSeq.Add(1))
	out, err := ctr(n.Socket(), append([]string{"task", "exec", "--exec-id", execID, id}, args...)...)
	if err != nil {
		return out, fmt.Errorf("exec in pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return out, nil
}
