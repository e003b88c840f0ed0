//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/e2e/harness"
)

// TestCoexistenceAndDisable runs two clusters whose agents are in
// coexistence mode (the chart's default), on nodes whose routes to their
// pods and forwarding stand for the primary CNI: pods reach each other
// across the clusters, a global service is answered from both clusters, a
// Service that is not global is translated by the agent before an nftables
// DNAT standing for kube-proxy sees it, one kube-proxy keeps
// (sessionAffinity ClientIP) is withdrawn by the agent and works through
// that DNAT, and
// `clustermesh disable` leaves the stopped agent's node without tunnel
// device, pins or programs.
func TestCoexistenceAndDisable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	kubeBin, bins, dir, log := ownMesh(ctx, t, "coexistence", "ip", "nsenter", "mount", "nft")
	m, err := harness.Start(ctx, harness.Config{
		Prefix: "cme", Clusters: []harness.ClusterSpec{{Name: "c1", ID: 1}, {Name: "c2", ID: 2}},
		NodesPerCluster: 1, KubeBinDir: kubeBin, Bins: bins, Dir: dir, Log: log,
		Join: harness.JoinCLI, Mode: "coexist",
	})
	if err != nil {
		t.Fatalf("start mesh (logs in %s): %v", dir, err)
	}
	t.Cleanup(m.Close)
	if err := m.WaitReady(ctx, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	c1, c2 := m.Cluster("c1"), m.Cluster("c2")
	node1 := c1.Nodes[0]
	// The primary CNI's part: the harness routes each pod from its node;
	// forwarding is turned on here.
	for _, c := range m.Clusters {
		for _, n := range c.Nodes {
			if out, err := n.NS.Exec("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"); err != nil {
				t.Fatalf("ip_forward on %s: %v: %s", n.Name, err, out)
			}
		}
	}
	p1, p2 := c1.Pods()[0], c2.Pods()[0]

	t.Run("pods reach each other across clusters", func(t *testing.T) {
		for _, pair := range [][2]*harness.Pod{{p1, p2}, {p2, p1}} {
			if err := reach(pair[0], pair[1], pair[1].Node.Cluster.Name, 30*time.Second); err != nil {
				t.Fatal(err)
			}
		}
	})

	client, err := node1.AddPod(ctx, "client", map[string]string{"app": "client"})
	if err != nil {
		t.Fatal(err)
	}
	plainVIP, err := c1.CreateService(ctx, "plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	var globalVIP string
	for _, c := range m.Clusters {
		ip, err := c.CreateService(ctx, "web", map[string]string{"service.cilium.io/global": "true"})
		if err != nil {
			t.Fatal(err)
		}
		if c == c1 {
			globalVIP = ip
		}
	}
	if err := node1.WaitBackends(ctx, harness.PodNamespace, "web", 2, 2, 90*time.Second); err != nil {
		t.Fatal(err)
	}

	t.Run("global service answered from both clusters", func(t *testing.T) {
		seen := map[string]bool{}
		err := eventually(30*time.Second, func() error {
			s, err := client.HTTP(globalVIP+":"+strconv.Itoa(harness.ServiceHTTPPort), 2*time.Second)
			if err != nil {
				return err
			}
			seen[s.Cluster] = true
			if !seen["c1"] || !seen["c2"] {
				return fmt.Errorf("answered by %v so far", seen)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})

	// kube-proxy's part: a DNAT of each Service that is not global, with
	// a counter each.
	keptVIP, err := c1.CreateService(ctx, "kept", nil)
	if err != nil {
		t.Fatal(err)
	}
	rules := [][]string{
		{"add", "table", "ip", "cme"},
		{"add", "chain", "ip", "cme", "cmpre", "{ type nat hook prerouting priority -100 ; }"},
	}
	for name, vip := range map[string]string{"plain": plainVIP, "kept": keptVIP} {
		rules = append(rules, []string{"add", "counter", "ip", "cme", name},
			[]string{"add", "rule", "ip", "cme", "cmpre", "ip", "daddr", vip, "tcp", "dport", strconv.Itoa(harness.ServiceHTTPPort),
				"counter", "name", name, "dnat", "to", p1.HTTPAddr()})
	}
	for _, r := range rules {
		if out, err := node1.NS.Exec("nft", r...); err != nil {
			t.Fatalf("nft %v: %v: %s", r, err, out)
		}
	}
	kubeProxy := func(t *testing.T, name string) string {
		t.Helper()
		out, err := node1.NS.Exec("nft", "list", "counter", "ip", "cme", name)
		if err != nil {
			t.Fatal(err)
		}
		packets := regexp.MustCompile(`packets (\d+)`).FindSubmatch(out)
		if packets == nil {
			t.Fatalf("no packet count in %s", out)
		}
		return string(packets[1])
	}

	t.Run("non-global service translated by the agent before kube-proxy", func(t *testing.T) {
		if err := node1.WaitBackends(ctx, harness.PodNamespace, "plain", 1, 1, 60*time.Second); err != nil {
			t.Fatalf("the agent does not program Service plain (not global): %v", err)
		}
		s, err := client.HTTP(plainVIP+":"+strconv.Itoa(harness.ServiceHTTPPort), 5*time.Second)
		if err != nil || s.Pod != p1.Name {
			t.Fatalf("HTTP to %s: %+v %v", plainVIP, s, err)
		}
		if n := kubeProxy(t, "plain"); n != "0" {
			t.Errorf("kube-proxy's DNAT of %s saw %s packets: the agent did not translate first", plainVIP, n)
		}
	})

	t.Run("service kube-proxy keeps left to it", func(t *testing.T) {
		if err := node1.WaitBackends(ctx, harness.PodNamespace, "kept", 1, 1, 60*time.Second); err != nil {
			t.Fatalf("the agent does not program Service kept before its sessionAffinity: %v", err)
		}
		svcs := c1.CP.Client.CoreV1().Services(harness.PodNamespace)
		svc, err := svcs.Get(ctx, "kept", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		if _, err := svcs.Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		err = eventually(30*time.Second, func() error {
			bs, err := node1.Backends(ctx, harness.PodNamespace, "kept")
			if err == nil && len(bs) != 0 {
				err = fmt.Errorf("still programmed: %v", bs)
			}
			return err
		})
		if err != nil {
			t.Fatalf("the agent keeps Service kept with sessionAffinity ClientIP: %v", err)
		}
		s, err := client.HTTP(keptVIP+":"+strconv.Itoa(harness.ServiceHTTPPort), 5*time.Second)
		if err != nil || s.Pod != p1.Name {
			t.Fatalf("HTTP to %s through kube-proxy's DNAT: %+v %v", keptVIP, s, err)
		}
		if n := kubeProxy(t, "kept"); n == "0" {
			t.Errorf("kube-proxy's DNAT of %s saw no packet", keptVIP)
		}
	})

	t.Run("disable cleans the node up", func(t *testing.T) {
		n := c2.Nodes[0]
		attached := func() (int, error) {
			var count int
			err := n.NS.Do(func() error {
				ifc, err := net.InterfaceByName(n.Pods[0].HostIf)
				if err != nil {
					return err
				}
				res, err := link.QueryPrograms(link.QueryOptions{Target: ifc.Index, Attach: ebpf.AttachTCXIngress})
				if err != nil {
					return err
				}
				count = len(res.Programs)
				return nil
			})
			return count, err
		}
		if c, err := attached(); err != nil || c != 1 {
			t.Fatalf("before disable: %d programs on %s (%v), want 1", c, n.Pods[0].HostIf, err)
		}
		if _, err := m.CLI(ctx, "disable", "--context", "c2"); err != nil {
			t.Fatal(err)
		}
		// The kubelet stops the agent once its DaemonSet is deleted.
		n.StopAgent()
		if _, err := n.NS.IP("link", "show", harness.TunnelDev); err == nil {
			t.Errorf("tunnel device %s left on %s", harness.TunnelDev, n.Name)
		}
		for _, sub := range []string{"maps", "links"} {
			if _, err := os.Stat(filepath.Join(n.PinDir(), sub)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s/%s left on %s (%v)", n.PinDir(), sub, n.Name, err)
			}
		}
		if left, err := attached(); err != nil || left != 0 {
			t.Errorf("tcx programs left on %s of %s: %d (%v)", n.Pods[0].HostIf, n.Name, left, err)
		}
	})
}
