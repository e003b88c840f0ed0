package harness

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/clustermesh/clustermesh/internal/kubetest"
)

// TunnelDev is every node's `vxlan external` device, created by its agent
// (on the only device with an IPv4 address, ul0, as underlay).
const TunnelDev = "cm-vx"

// podGateway is the pods' next hop: a link-local address answered by a
// static neighbor entry for the host side of the pod's veth.
const podGateway = "169.254.1.1"

// Node is a namespace on the underlay with a vxlan device, the host sides
// of its pods' veths, and a clustermesh-agent process.
type Node struct {
	Name       string
	Cluster    *Cluster
	NS         *NS
	UnderlayIP netip.Addr
	PodCIDR    netip.Prefix
	Agent      *Process
	Pods       []*Pod

	// StatusSocket is the agent's status API.
	StatusSocket string
	// ExtraAgentArgs come after Config.AgentArgs at the next StartAgent.
	ExtraAgentArgs []string
	pinDir         string
	dir            string
	nextPod        int
}

// Pod is a namespace with eth0 (IP/32, default route to its node) running
// an echo server, and its Pod object.
type Pod struct {
	Name string
	// Namespace is the Pod object's Kubernetes namespace (PodNamespace
	// unless made by AddPodIn).
	Namespace string
	Node      *Node
	NS        *NS
	IP        netip.Addr
	HostIf    string
	Server    *Process
}

// addNode creates node name of cluster c: namespace, underlay port, vxlan,
// Node object, bpffs pin dir and agent. Node j of cluster c has the pod
// CIDR 10.<id>.<j>.0/24.
func (m *Mesh) addNode(ctx context.Context, c *Cluster, name string, j int) (*Node, error) {
	m.mu.Lock()
	ip := m.nextIP.Next()
	m.nextIP = ip
	m.mu.Unlock()
	if !underlay.Contains(ip) {
		return nil, errNoAddress
	}
	n := &Node{
		Name: name, Cluster: c, UnderlayIP: ip,
		PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(c.ID), byte(j), 0}), 24),
		dir:     filepath.Join(c.dir, name),
		pinDir:  filepath.Join(PinRoot, m.Run, c.Name+"-"+name),
	}
	var err error
	if n.NS, err = m.newNS(c.Name + "-" + name); err != nil {
		return nil, err
	}
	port := fmt.Sprintf("%s-%s%s", m.cfg.Prefix, c.Name, name)
	if err := m.DC.Batch(
		fmt.Sprintf("link add %s mtu 9000 type veth peer name ul0 netns %s", port, n.NS.Name),
		fmt.Sprintf("link set %s master %s-br up", port, m.cfg.Prefix)); err != nil {
		return nil, err
	}
	if err := n.NS.Batch(
		"link set lo up",
		"link set ul0 mtu 9000 up",
		fmt.Sprintf("addr add %s/%d dev ul0", ip, underlay.Bits())); err != nil {
		return nil, err
	}
	if _, err := kubetest.CreateNode(ctx, c.CP.Client, kubetest.NodeSpec{
		Name: name, InternalIP: ip.String(), PodCIDRs: []string{n.PodCIDR.String()},
	}); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(n.dir, 0o700); err != nil {
		return nil, err
	}
	// The pin dir is a bpffs mounted here, in the host's mount namespace,
	// so that the pins outlive an agent and Close can unmount them.
	if err := os.MkdirAll(n.pinDir, 0o700); err != nil {
		return nil, err
	}
	if out, err := exec.Command("mount", "-t", "bpf", "bpf", n.pinDir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mount bpffs on %s: %w: %s", n.pinDir, err, out)
	}
	m.onClose(func() { _ = exec.Command("umount", n.pinDir).Run() })
	n.StatusSocket = filepath.Join(n.dir, "agent.sock")
	if err := n.StartAgent(); err != nil {
		return nil, err
	}
	c.Nodes = append(c.Nodes, n)
	return n, nil
}

// StartAgent starts the node's clustermesh-agent (again, after StopAgent).
func (n *Node) StartAgent() error {
	c := n.Cluster
	m := c.mesh
	args := append([]string{
		"--node-name=" + n.Name, "--cluster-name=" + c.Name, "--cluster-id=" + strconv.Itoa(int(c.ID)),
		"--kubeconfig=" + c.agentKubeconfig, "--datapath=bpf", "--tunnel-device=" + TunnelDev, "--mode=" + m.cfg.Mode,
		"--state-dir=" + filepath.Join(n.dir, "state"), "--status-socket=" + n.StatusSocket,
		"--metrics-address=", "--clustermesh-config=" + c.ConfigDir,
		"--bpf-pin-dir=" + n.pinDir, "--bpf-ct-entries=" + strconv.Itoa(m.cfg.CTEntries),
	}, m.cfg.AgentArgs...)
	if c.kvstoremesh() {
		args = append(args, "--clustermesh-cache-config="+c.cacheConfig())
	}
	if c.ownKVStore != "" {
		// As the chart passes it: the own pods' identities, read as
		// local-reader.
		args = append(args, "--kvstore-config="+c.ownKVStore)
	}
	args = append(args, n.ExtraAgentArgs...)
	if m.cfg.Join == JoinCLI {
		// As the chart passes them: the DaemonSet `clustermesh enable`
		// created stands for this agent's, so that `clustermesh disable`
		// makes a stopping agent clean its node up.
		args = append(args, "--status-namespace="+meshNamespace, "--owner-daemonset=clustermesh-agent")
	}
	p, err := StartProcess("agent "+c.Name+"/"+n.Name, filepath.Join(n.dir, "agent.log"), n.NS, m.cfg.Bins.Agent, args...)
	if err != nil {
		return err
	}
	n.Agent = p
	m.onClose(func() { p.Stop(5 * time.Second) })
	return nil
}

// PinDir is the node's bpffs directory (the agent's --bpf-pin-dir).
func (n *Node) PinDir() string { return n.pinDir }

// StopAgent stops the node's agent; the datapath stays programmed.
func (n *Node) StopAgent() { n.Agent.Stop(5 * time.Second) }

// AddPod creates a pod on n with the next address of n's pod CIDR (from
// .10): namespace, veth, host route, echo server and a Running, Ready Pod
// object in PodNamespace.
func (n *Node) AddPod(ctx context.Context, name string, labels map[string]string) (*Pod, error) {
	return n.AddPodIn(ctx, PodNamespace, name, labels)
}

// AddPodIn is AddPod with the Pod object in Kubernetes namespace ns (which
// must exist); name must be unique in the cluster.
func (n *Node) AddPodIn(ctx context.Context, ns, name string, labels map[string]string) (*Pod, error) {
	m := n.Cluster.mesh
	n.nextPod++
	k := n.nextPod
	ip := n.PodCIDR.Addr()
	for range k + 9 {
		ip = ip.Next()
	}
	p := &Pod{Name: name, Namespace: ns, Node: n, IP: ip, HostIf: fmt.Sprintf("%s-p%d", m.cfg.Prefix, k)}
	var err error
	if p.NS, err = m.newNS(n.Cluster.Name + "-" + name); err != nil {
		return nil, err
	}
	if err := n.NS.Batch(
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", p.HostIf, p.NS.Name),
		fmt.Sprintf("link set %s up", p.HostIf),
		fmt.Sprintf("route add %s/32 dev %s", ip, p.HostIf)); err != nil {
		return nil, err
	}
	mac, err := n.NS.LinkMAC(p.HostIf)
	if err != nil {
		return nil, err
	}
	if err := p.NS.Batch(
		"link set lo up",
		"link set eth0 mtu 1450 up",
		fmt.Sprintf("addr add %s/32 dev eth0", ip),
		fmt.Sprintf("route add %s dev eth0 scope link", podGateway),
		fmt.Sprintf("route add default via %s dev eth0", podGateway),
		fmt.Sprintf("neigh add %s lladdr %s dev eth0 nud permanent", podGateway, mac)); err != nil {
		return nil, err
	}
	srv, err := StartProcess("echo "+n.Cluster.Name+"/"+name, filepath.Join(n.dir, name+".log"), p.NS, m.cfg.Bins.Echo,
		"-cluster="+n.Cluster.Name, "-pod="+name,
		"-http=:"+strconv.Itoa(HTTPPort), "-udp=:"+strconv.Itoa(UDPPort))
	if err != nil {
		return nil, err
	}
	p.Server = srv
	m.onClose(srv.Kill)
	if _, err := kubetest.CreateRunningPod(ctx, n.Cluster.CP.Client, kubetest.PodSpec{
		Namespace: ns, Name: name, NodeName: n.Name, Labels: labels,
		IPs: []string{ip.String()}, HostIP: n.UnderlayIP.String(),
		Ports: []corev1.ContainerPort{
			{Name: "http", ContainerPort: HTTPPort, Protocol: corev1.ProtocolTCP},
			{Name: "udp", ContainerPort: UDPPort, Protocol: corev1.ProtocolUDP},
		},
	}); err != nil {
		return nil, err
	}
	n.Pods = append(n.Pods, p)
	return p, nil
}

// Delete deletes the Pod object (the kubelet's part of a pod deletion),
// then the pod's echo server and namespace, and drops it from its node.
func (p *Pod) Delete(ctx context.Context) error {
	n := p.Node
	err := n.Cluster.CP.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s/%s: %w", n.Cluster.Name, p.Name, err)
	}
	p.Server.Kill()
	p.NS.Remove()
	n.Pods = slices.DeleteFunc(n.Pods, func(q *Pod) bool { return q == p })
	return nil
}

// SetReady flips the pod's Ready condition (the kubelet's readiness probe).
func (p *Pod) SetReady(ctx context.Context, ready bool) error {
	_, err := kubetest.SetPodReady(ctx, p.Node.Cluster.CP.Client, p.Namespace, p.Name, ready)
	return err
}
