package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/clustermesh/clustermesh/internal/meshstatus"
)

// Join modes of Config.Join.
const (
	// JoinDirect: each apiserver creates the remote users itself
	// (--remote-clusters) and the harness copies the client configs it
	// writes into the readers' agent config directories.
	JoinDirect = "direct"
	// JoinCLI: `clustermesh enable` and `clustermesh connect
	// --connection-mode mesh`, with the harness acting as the kubelet and the
	// load balancer controller (see joinCLI).
	JoinCLI = "cli"
)

// Names the CLI and chart use (cmd/clustermesh/README.md).
const (
	meshNamespace        = "clustermesh-system"
	secretCA             = "clustermesh-ca"
	secretRemoteClusters = "clustermesh-remote-clusters"
	configMapUsers       = "clustermesh-remote-users"
	serviceAPIServer     = "clustermesh-apiserver"
	etcdServicePort      = 2379
	// secretMountDir is where the chart mounts the remote-clusters Secret;
	// the configs in it name their certificate files below it.
	secretMountDir = "/var/lib/clustermesh/remote-clusters"
)

// writeKubeconfig merges every cluster's admin kubeconfig into one file
// with a context per cluster, for the CLI.
func (m *Mesh) writeKubeconfig() error {
	all := clientcmdapi.NewConfig()
	for _, c := range m.Clusters {
		kc, err := clientcmd.LoadFromFile(c.CP.Kubeconfig())
		if err != nil {
			return err
		}
		for k, v := range kc.Clusters {
			all.Clusters[k] = v
		}
		for k, v := range kc.AuthInfos {
			all.AuthInfos[k] = v
		}
		for k, v := range kc.Contexts {
			all.Contexts[k] = v
		}
	}
	all.CurrentContext = m.Clusters[0].Name
	m.Kubeconfig = filepath.Join(m.cfg.Dir, "kubeconfig")
	return clientcmd.WriteToFile(*all, m.Kubeconfig)
}

// CLI runs the clustermesh CLI with the mesh's kubeconfig.
func (m *Mesh) CLI(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, m.cfg.Bins.CLI, append([]string{"--kubeconfig=" + m.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("clustermesh %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// CLIStdout runs the clustermesh CLI like CLI but returns its standard
// output alone (for -o json); the error holds the standard error.
func (m *Mesh) CLIStdout(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, m.cfg.Bins.CLI, append([]string{"--kubeconfig=" + m.Kubeconfig}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("clustermesh %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

// CLIStatus runs `clustermesh status` with args and returns its standard
// output. A mesh that is not ready makes status exit non-zero with "mesh
// not ready": that is no error here (the output says what is not ready);
// any other failure is.
func (m *Mesh) CLIStatus(ctx context.Context, args ...string) ([]byte, error) {
	out, err := m.CLIStdout(ctx, append([]string{"status"}, args...)...)
	if err != nil && strings.Contains(err.Error(), "mesh not ready") {
		return out, nil
	}
	return out, err
}

// enableCLI runs `clustermesh enable` for c, acts as the load balancer
// controller for the chart's Service (an address on the datacenter bridge,
// forwarded to the etcd the apiserver process will run on loopback) and
// seeds the apiserver's etcd TLS directory with the CA enable created.
func (m *Mesh) enableCLI(ctx context.Context, c *Cluster, lb netip.Addr) error {
	if _, err := m.CLI(ctx, "enable", "--context="+c.Name, "--cluster-name="+c.Name,
		fmt.Sprintf("--cluster-id=%d", c.ID), "--service-type=LoadBalancer", "--connection-mode="+m.cfg.Connection); err != nil {
		return err
	}
	if err := m.DC.Batch(fmt.Sprintf("addr add %s/32 dev %s-br", lb, m.cfg.Prefix)); err != nil {
		return err
	}
	cs := c.CP.Client.CoreV1()
	svc, err := cs.Services(meshNamespace).Get(ctx, serviceAPIServer, metav1.GetOptions{})
	if err != nil {
		return err
	}
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lb.String()}}
	if _, err := cs.Services(meshNamespace).UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("set load balancer ingress: %w", err)
	}
	ca, err := cs.Secrets(meshNamespace).Get(ctx, secretCA, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.tlsDir(), 0o700); err != nil {
		return err
	}
	for _, k := range []string{"ca.crt", "ca.key"} {
		if err := os.WriteFile(filepath.Join(c.tlsDir(), k), ca.Data[k], 0o600); err != nil {
			return err
		}
	}
	c.advertise = net.JoinHostPort(lb.String(), fmt.Sprint(etcdServicePort))
	return nil
}

func (c *Cluster) tlsDir() string { return filepath.Join(c.dir, "etcd-pki") }

func (c *Cluster) usersFile() string { return filepath.Join(c.dir, "remote-users", "users.yaml") }

// mountRemoteUsers writes the users ConfigMap `clustermesh connect`
// maintains (the clusters that get a read-only etcd user remote-<cluster>)
// to the apiserver's --remote-users-file, as the kubelet mounts it.
func (c *Cluster) mountRemoteUsers(ctx context.Context) error {
	cm, err := c.CP.Client.CoreV1().ConfigMaps(meshNamespace).Get(ctx, configMapUsers, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(c.usersFile()), 0o700); err != nil {
		return err
	}
	return writeAtomic(c.usersFile(), []byte(cm.Data["users.yaml"]))
}

// Mount writes both objects `clustermesh connect` maintains in c as the
// kubelet would mount them: the users file of the apiserver and the
// remote-clusters directory of the agents (and, in connection mode
// kvstoremesh, of the apiserver).
func (c *Cluster) Mount(ctx context.Context) error {
	if err := c.mountRemoteUsers(ctx); err != nil {
		return err
	}
	return c.MountRemoteClusters(ctx)
}

// MountRemoteClusters does what the kubelet does with the remote-clusters
// Secret `clustermesh connect` wrote: its keys become the files of the
// agents' config directory (files no longer in it are removed). The
// configs name their files under the chart's mount path, which becomes
// the directory's path here.
func (c *Cluster) MountRemoteClusters(ctx context.Context) error {
	s, err := c.CP.Client.CoreV1().Secrets(meshNamespace).Get(ctx, secretRemoteClusters, metav1.GetOptions{})
	if err != nil {
		return err
	}
	// Certificates first, configs last, so an agent never reads a config
	// whose files are missing.
	var configs []string
	for k, v := range s.Data {
		if !strings.Contains(k, ".") {
			configs = append(configs, k)
			continue
		}
		if err := writeAtomic(filepath.Join(c.ConfigDir, k), v); err != nil {
			return err
		}
	}
	for _, k := range configs {
		v := strings.ReplaceAll(string(s.Data[k]), secretMountDir+"/", c.ConfigDir+"/")
		if err := writeAtomic(filepath.Join(c.ConfigDir, k), []byte(v)); err != nil {
			return err
		}
	}
	entries, err := os.ReadDir(c.ConfigDir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if _, ok := s.Data[e.Name()]; !ok && !strings.HasPrefix(e.Name(), ".") && !strings.Contains(e.Name(), ".") {
			if err := os.Remove(filepath.Join(c.ConfigDir, e.Name())); err != nil {
				return err
			}
		}
	}
	if c.kvstoremesh() {
		return c.mountKVStoreMesh()
	}
	return nil
}

func writeAtomic(path string, data []byte) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// WaitReports waits until every agent's status report in the Kubernetes
// API (read with `clustermesh status -o json`) says what the agent's status
// socket says: the same remotes, readiness and entry counts per kind. The
// reports lag the sockets by the agents' publish interval.
func (m *Mesh) WaitReports(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := m.reportsMatch(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent status reports: %w", err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (m *Mesh) reportsMatch(ctx context.Context) error {
	line := func(ready bool, nodes, services, identities, ips uint64) string {
		return fmt.Sprintf("ready=%v nodes=%d services=%d identities=%d ips=%d", ready, nodes, services, identities, ips)
	}
	want := map[string]string{} // cluster/node/remote → line
	for _, c := range m.Clusters {
		for _, n := range c.Nodes {
			st, err := n.Status(ctx)
			if err != nil {
				return err
			}
			for _, r := range st.RemoteClusters {
				e := map[string]uint64{}
				for _, k := range r.Kinds {
					e[k.Kind] = k.Entries
				}
				want[c.Name+"/"+n.Name+"/"+r.Name] = line(r.Ready, e["nodes"], e["services"], e["identities"], e["ipcache"])
			}
		}
	}
	args := []string{"-o", "json"}
	for _, c := range m.Clusters {
		args = append(args, "--context="+c.Name)
	}
	js, err := m.CLIStatus(ctx, args...)
	if err != nil {
		return err
	}
	var st struct {
		Clusters []struct {
			Agents []meshstatus.AgentReport `json:"agents"`
		} `json:"clusters"`
	}
	if err := json.Unmarshal(js, &st); err != nil {
		return fmt.Errorf("status -o json: %w", err)
	}
	got := map[string]string{}
	for _, c := range st.Clusters {
		for _, a := range c.Agents {
			for _, r := range a.Remotes {
				e := func(k string) uint64 { return uint64(r.Entries[k]) }
				got[a.Cluster+"/"+a.Node+"/"+r.Name] = line(r.Ready, e(meshstatus.KindNodes), e(meshstatus.KindServices),
					e(meshstatus.KindIdentities), e(meshstatus.KindIPCache))
			}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if got[k] != want[k] {
			return fmt.Errorf("%s: the status ConfigMap says %q, the agent's socket %q", k, got[k], want[k])
		}
	}
	if len(got) != len(want) {
		return fmt.Errorf("the status ConfigMaps hold %d agent×remote pairs, the sockets %d", len(got), len(want))
	}
	return nil
}
