package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/internal/meshstatus"
)

// Connection modes of Config.Connection: how the agents read the remote
// clusters (the chart's agent.connectionMode, set by `clustermesh enable
// --connection-mode`).
const (
	// ConnectionKVStoreMesh (the default): each clustermesh-apiserver runs
	// its kvstoremesh part (--kvstoremesh-config), connected once to every
	// remote cluster's etcd; the agents read every remote from the cache
	// in their own cluster's etcd (--clustermesh-cache-config).
	ConnectionKVStoreMesh = "kvstoremesh"
	// ConnectionDirect: every agent connects to every remote cluster's
	// etcd; the apiservers run no kvstoremesh.
	ConnectionDirect = "direct"
)

// ErrKVStoreMeshNeedsCLI: the harness runs the kvstoremesh only in
// clusters joined by the CLI (JoinCLI) with the embedded etcd, where
// `clustermesh enable` issues the local-reader certificate the agents read
// the cache with.
var ErrKVStoreMeshNeedsCLI = errors.New("connection mode kvstoremesh needs JoinCLI and embedded etcds")

// Names the chart uses for connection mode kvstoremesh.
const (
	configMapCache    = "clustermesh-cache-config"
	secretLocalReader = "clustermesh-apiserver-local-reader-cert"
	// cacheMountDir is where the chart mounts both for the agents.
	cacheMountDir = "/var/lib/clustermesh/cache"
)

// Connection returns the mesh's connection mode.
func (m *Mesh) Connection() string { return m.cfg.Connection }

func (c *Cluster) kvstoremesh() bool { return c.mesh.cfg.Connection == ConnectionKVStoreMesh }

// kvstoremeshDir is the apiserver's --kvstoremesh-config directory.
func (c *Cluster) kvstoremeshDir() string { return filepath.Join(c.dir, "kvstoremesh") }

// cacheConfig is the agents' --clustermesh-cache-config file.
func (c *Cluster) cacheConfig() string { return filepath.Join(c.dir, "cache", "config.yaml") }

// mountCache does what the kubelet does with the chart's cache volume of
// the agents: the ConfigMap clustermesh-cache-config and the Secret of
// the local-reader certificate become the files of one directory (the
// config's paths under the chart's mount point rewritten to it). The
// config names the apiserver's Service, which the cluster's DNS would
// resolve; here it becomes the load balancer address on the datacenter
// bridge, which the node namespaces reach.
func (c *Cluster) mountCache(ctx context.Context) error {
	cs := c.CP.Client.CoreV1()
	cm, err := cs.ConfigMaps(meshNamespace).Get(ctx, configMapCache, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("cache config of %s (enabled with --connection-mode %s?): %w", c.Name, ConnectionKVStoreMesh, err)
	}
	s, err := cs.Secrets(meshNamespace).Get(ctx, secretLocalReader, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("local-reader certificate of %s: %w", c.Name, err)
	}
	dir := filepath.Dir(c.cacheConfig())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, k := range []string{"ca.crt", "tls.crt", "tls.key"} {
		if err := writeAtomic(filepath.Join(dir, k), s.Data[k]); err != nil {
			return err
		}
	}
	svc := fmt.Sprintf("https://%s.%s.svc:%d", serviceAPIServer, meshNamespace, etcdServicePort)
	cfg := cm.Data["config.yaml"]
	if !strings.Contains(cfg, svc) {
		return fmt.Errorf("cache config of %s does not name %s: %q", c.Name, svc, cfg)
	}
	cfg = strings.ReplaceAll(cfg, svc, "https://"+c.advertise)
	cfg = strings.ReplaceAll(cfg, cacheMountDir+"/", dir+"/")
	return writeAtomic(c.cacheConfig(), []byte(cfg))
}

// mountKVStoreMesh writes the apiserver's --kvstoremesh-config directory:
// the remote-clusters Secret as MountRemoteClusters wrote it for the
// agents (the chart mounts the same Secret into the apiserver), with each
// remote's load balancer address replaced by the loopback address it
// forwards to, because the apiserver process runs in the host's network
// namespace, where the datacenter bridge is not reachable. Configs of
// remotes no longer in the Secret are removed.
func (c *Cluster) mountKVStoreMesh() error {
	dir := c.kvstoremeshDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	entries, err := os.ReadDir(c.ConfigDir)
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || strings.Contains(name, ".") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(c.ConfigDir, name))
		if err != nil {
			return err
		}
		cfg, replaced := string(data), false
		for _, o := range c.mesh.Clusters {
			if o.advertise != "" && strings.Contains(cfg, "https://"+o.advertise) {
				cfg = strings.ReplaceAll(cfg, "https://"+o.advertise, o.EtcdHostEndpoint())
				replaced = true
			}
		}
		if !replaced {
			return fmt.Errorf("kvstoremesh config %s of %s names no cluster's load balancer: %q", name, c.Name, cfg)
		}
		if err := writeAtomic(filepath.Join(dir, name), []byte(cfg)); err != nil {
			return err
		}
		want[name] = true
	}
	entries, err = os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !want[e.Name()] && !strings.HasPrefix(e.Name(), ".") {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// KVStoreMesh returns the kvstoremesh status c's apiserver last published
// (`clustermesh status -o json`): one entry per remote it mirrors.
func (m *Mesh) KVStoreMesh(ctx context.Context, c *Cluster) ([]meshstatus.CachedRemote, error) {
	js, err := m.CLIStatus(ctx, "-o", "json", "--context="+c.Name)
	if err != nil {
		return nil, err
	}
	var st struct {
		Clusters []struct {
			APIServer *meshstatus.APIServerReport `json:"apiserver"`
		} `json:"clusters"`
	}
	if err := json.Unmarshal(js, &st); err != nil {
		return nil, fmt.Errorf("status -o json: %w", err)
	}
	if len(st.Clusters) != 1 || st.Clusters[0].APIServer == nil {
		return nil, fmt.Errorf("status of %s: no apiserver report", c.Name)
	}
	return st.Clusters[0].APIServer.KVStoreMesh, nil
}

// EtcdClients are the client connections on one cluster's etcd, by the
// cluster of the client.
type EtcdClients struct {
	// KVStoreMesh counts connections from the cluster's clustermesh-apiserver
	// process (its kvstoremesh, for another cluster than the etcd's own).
	KVStoreMesh int
	// Agents counts connections from the cluster's nodes (through the etcd's
	// load balancer, by the node's underlay address).
	Agents int
}

// EtcdClients counts the established TCP connections on c's embedded etcd
// (its loopback listen port, as the kernel lists them with `ss`), by the
// cluster whose process holds the client side: a clustermesh-apiserver, or
// an agent whose connection came through the load balancer (the forwarder
// in the datacenter namespace knows which node address it came from).
// Connections it cannot attribute are counted under "".
func (m *Mesh) EtcdClients(c *Cluster) (map[string]EtcdClients, error) {
	if c.etcdPort == 0 || c.lb == nil {
		return nil, fmt.Errorf("cluster %s: no embedded etcd behind a load balancer", c.Name)
	}
	out, err := exec.Command("ss", "-Htnp", "state", "established", "dst", "127.0.0.1:"+strconv.Itoa(c.etcdPort)).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("ss: %w: %s", err, out)
	}
	apiservers := map[int]string{}
	nodes := map[netip.Addr]string{}
	for _, o := range m.Clusters {
		if o.APIServer != nil && !o.APIServer.Exited() {
			apiservers[o.APIServer.Pid()] = o.Name
		}
		for _, n := range o.Nodes {
			nodes[n.UnderlayIP] = o.Name
		}
	}
	forwarded := c.lb.Clients()
	res := map[string]EtcdClients{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		local, pid, err := parseSS(sc.Text())
		if err != nil {
			return nil, err
		}
		switch {
		case apiservers[pid] != "":
			r := res[apiservers[pid]]
			r.KVStoreMesh++
			res[apiservers[pid]] = r
		case pid == os.Getpid():
			name := ""
			if src, ok := forwarded[local]; ok {
				name = nodes[src]
			}
			r := res[name]
			r.Agents++
			res[name] = r
		default:
			r := res[""]
			r.Agents++
			res[""] = r
		}
	}
	return res, sc.Err()
}

var ssLine = regexp.MustCompile(`^\s*\d+\s+\d+\s+(\S+)\s+(\S+)\s+users:\(\("[^"]*",pid=(\d+),`)

// parseSS returns the local address and the owning process of one line
// of `ss -Htnp state established`.
func parseSS(line string) (string, int, error) {
	g := ssLine.FindStringSubmatch(line)
	if g == nil {
		return "", 0, fmt.Errorf("ss: unexpected line %q", line)
	}
	pid, err := strconv.Atoi(g[3])
	return g[1], pid, err
}

// Clients returns, for every connection f forwards now, the local address
// of its upstream side (on loopback) and the address it came from.
func (f *Forwarder) Clients() map[string]netip.Addr {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]netip.Addr, len(f.clients))
	for k, v := range f.clients {
		out[k] = v
	}
	return out
}

// track records (or with from invalid, forgets) a forwarded connection.
func (f *Forwarder) track(up net.Conn, from netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.clients == nil {
		f.clients = map[string]netip.Addr{}
	}
	if from.IsValid() {
		f.clients[up.LocalAddr().String()] = from
	} else {
		delete(f.clients, up.LocalAddr().String())
	}
}

// EtcdDataDir is the data directory of c's embedded etcd. Removing it
// while the apiserver is stopped makes the next start begin with an empty
// etcd (as a chart's apiserver with an emptyDir does after a reschedule).
func (c *Cluster) EtcdDataDir() string { return filepath.Join(c.dir, "etcd") }
