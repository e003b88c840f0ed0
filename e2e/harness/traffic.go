package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Served says which echo server answered.
type Served struct {
	Cluster, Pod string
}

func parseServed(line string) (Served, error) {
	f := strings.Fields(line)
	if len(f) < 2 {
		return Served{}, fmt.Errorf("unexpected echo answer %q", line)
	}
	return Served{Cluster: f[0], Pod: f[1]}, nil
}

// HTTP opens a new TCP connection from p to addr (ip:port), sends one GET
// and returns who answered.
func (p *Pod) HTTP(addr string, timeout time.Duration) (Served, error) {
	var c net.Conn
	err := p.NS.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	if err != nil {
		return Served{}, fmt.Errorf("%s → %s: %w", p.Name, addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: echo\r\n\r\n"); err != nil {
		return Served{}, fmt.Errorf("%s → %s: %w", p.Name, addr, err)
	}
	r := bufio.NewReader(c)
	status, err := r.ReadString('\n')
	if err != nil || !strings.Contains(status, " 200 ") {
		return Served{}, fmt.Errorf("%s → %s: status %q: %v", p.Name, addr, status, err)
	}
	for { // headers
		l, err := r.ReadString('\n')
		if err != nil {
			return Served{}, fmt.Errorf("%s → %s: %w", p.Name, addr, err)
		}
		if strings.TrimSpace(l) == "" {
			break
		}
	}
	body, err := r.ReadString('\n')
	if err != nil {
		return Served{}, fmt.Errorf("%s → %s: body: %w", p.Name, addr, err)
	}
	return parseServed(body)
}

// UDP sends one datagram from p to addr and returns who answered.
func (p *Pod) UDP(addr string, timeout time.Duration) (Served, error) {
	var c net.Conn
	err := p.NS.Do(func() error {
		var err error
		c, err = net.Dial("udp", addr)
		return err
	})
	if err != nil {
		return Served{}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	msg := "ping-" + randomID()
	if _, err := io.WriteString(c, msg); err != nil {
		return Served{}, fmt.Errorf("%s → %s udp: %w", p.Name, addr, err)
	}
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return Served{}, fmt.Errorf("%s → %s udp: %w", p.Name, addr, err)
	}
	if !strings.HasSuffix(string(buf[:n]), " "+msg) {
		return Served{}, fmt.Errorf("%s → %s udp: answer %q does not echo %q", p.Name, addr, buf[:n], msg)
	}
	return parseServed(string(buf[:n]))
}

// Ping sends one ICMP echo request from p to ip with the ping command.
func (p *Pod) Ping(ip netip.Addr, timeout time.Duration) error {
	_, err := p.NS.Exec("ping", "-n", "-c", "1", "-W", strconv.Itoa(int(timeout.Seconds()+0.5)), ip.String())
	return err
}

// HTTPAddr and UDPAddr are the pod's echo endpoints.
func (p *Pod) HTTPAddr() string { return net.JoinHostPort(p.IP.String(), strconv.Itoa(HTTPPort)) }
func (p *Pod) UDPAddr() string  { return net.JoinHostPort(p.IP.String(), strconv.Itoa(UDPPort)) }

// Service ports of CreateService: HTTP on 80 (→ 8080), UDP on 81 (→ 8081).
const (
	ServiceHTTPPort = 80
	ServiceUDPPort  = 81
)

// CreateService creates a Service in PodNamespace selecting the echo pods
// (app=echo) with the given annotations and returns its ClusterIP.
func (c *Cluster) CreateService(ctx context.Context, name string, annotations map[string]string) (string, error) {
	return c.CreateServiceFor(ctx, name, map[string]string{"app": "echo"}, annotations)
}

// CreateServiceFor is CreateService for the pods matching selector.
func (c *Cluster) CreateServiceFor(ctx context.Context, name string, selector, annotations map[string]string) (string, error) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: PodNamespace, Name: name, Annotations: annotations},
		Spec: corev1.ServiceSpec{
			Selector: selector,
			Ports: []corev1.ServicePort{
				{Name: "http", Port: ServiceHTTPPort, TargetPort: intstr.FromInt32(HTTPPort), Protocol: corev1.ProtocolTCP},
				{Name: "udp", Port: ServiceUDPPort, TargetPort: intstr.FromInt32(UDPPort), Protocol: corev1.ProtocolUDP},
			},
		},
	}
	out, err := c.CP.Client.CoreV1().Services(PodNamespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("cluster %s: create service %s: %w", c.Name, name, err)
	}
	return out.Spec.ClusterIP, nil
}

// AgentStatus is the part of `clustermesh-agent status -o json` the
// harness reads.
type AgentStatus struct {
	ClusterName    string `json:"clusterName"`
	NodeName       string `json:"nodeName"`
	RemoteClusters []struct {
		Name          string `json:"name"`
		Connected     bool   `json:"connected"`
		Ready         bool   `json:"ready"`
		LastError     string `json:"lastError"`
		RefusedReason string `json:"refusedReason"`
		Kinds         []struct {
			Kind    string `json:"kind"`
			Entries uint64 `json:"entries,string"`
		} `json:"kinds"`
	} `json:"remoteClusters"`
	Services []struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
		Frontend  string `json:"frontend"`
		Protocol  string `json:"protocol"`
		Backends  []struct {
			Address string `json:"address"`
			Cluster string `json:"cluster"`
			Weight  uint32 `json:"weight"`
		} `json:"backends"`
	} `json:"services"`
	Policy PolicyStatus `json:"policy"`
}

// Status runs `clustermesh-agent status -o json` against n's agent.
func (n *Node) Status(ctx context.Context) (AgentStatus, error) {
	var st AgentStatus
	out, err := n.StatusText(ctx, "json")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("agent %s/%s status: %w", n.Cluster.Name, n.Name, err)
	}
	return st, nil
}

// StatusText runs `clustermesh-agent status -o <format>` against n's agent.
func (n *Node) StatusText(ctx context.Context, format string) (string, error) {
	cmd := exec.CommandContext(ctx, n.Cluster.mesh.cfg.Bins.Agent, "status", "--status-socket="+n.StatusSocket, "-o", format)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("agent %s/%s status: %w: %s", n.Cluster.Name, n.Name, err, out)
	}
	return string(out), nil
}

// IPCache returns the ipcache entries n's agent programs: prefix → cluster ID.
func (n *Node) IPCache(ctx context.Context) (map[string]uint32, error) {
	cmd := exec.CommandContext(ctx, n.Cluster.mesh.cfg.Bins.Agent, "status", "--status-socket="+n.StatusSocket, "-o", "json", "--entries")
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("agent %s/%s status --entries: %w", n.Cluster.Name, n.Name, err)
	}
	var st struct {
		IPCache []struct {
			Prefix    string `json:"prefix"`
			ClusterID uint32 `json:"clusterId"`
		} `json:"ipcache"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("agent %s/%s status --entries: %w", n.Cluster.Name, n.Name, err)
	}
	m := make(map[string]uint32, len(st.IPCache))
	for _, e := range st.IPCache {
		m[e.Prefix] = e.ClusterID
	}
	return m, nil
}

// WaitReady waits until every agent reports every other cluster connected
// and synced.
func (m *Mesh) WaitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		last = ""
		for _, c := range m.Clusters {
			for _, n := range c.Nodes {
				if n.Agent.Exited() {
					return fmt.Errorf("agent %s/%s exited: %s", c.Name, n.Name, n.Agent.LogTail(3000))
				}
				st, err := n.Status(ctx)
				if err != nil {
					last = err.Error()
					continue
				}
				ready := 0
				for _, r := range st.RemoteClusters {
					if r.Ready {
						ready++
					} else {
						last = fmt.Sprintf("agent %s/%s: remote %s not ready (connected %v, %s%s)", c.Name, n.Name, r.Name, r.Connected, r.LastError, r.RefusedReason)
					}
				}
				if ready != len(m.Clusters)-1 && last == "" {
					last = fmt.Sprintf("agent %s/%s: %d of %d remotes ready", c.Name, n.Name, ready, len(m.Clusters)-1)
				}
			}
		}
		if last == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("mesh not ready: %s", last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Backends returns the backends n's agent programs for the TCP frontend of
// Service ns/name, by cluster: address → weight.
func (n *Node) Backends(ctx context.Context, ns, name string) (map[string]map[string]uint32, error) {
	st, err := n.Status(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]map[string]uint32{}
	for _, s := range st.Services {
		if s.Namespace != ns || s.Name != name || s.Protocol != "TCP" {
			continue
		}
		for _, b := range s.Backends {
			if out[b.Cluster] == nil {
				out[b.Cluster] = map[string]uint32{}
			}
			out[b.Cluster][b.Address] = b.Weight
		}
	}
	return out, nil
}

// WaitBackends waits until n's agent programs all backends for the TCP
// frontend of Service ns/name, weighted of them with a non-zero weight.
func (n *Node) WaitBackends(ctx context.Context, ns, name string, all, weighted int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		bs, err := n.Backends(ctx, ns, name)
		a, w := 0, 0
		for _, byAddr := range bs {
			for _, wt := range byAddr {
				a++
				if wt > 0 {
					w++
				}
			}
		}
		if err == nil && a == all && w == weighted {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("service %s/%s on %s/%s: %d backends, %d weighted, want %d and %d (%v; %v)",
				ns, name, n.Cluster.Name, n.Name, a, w, all, weighted, bs, err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}
