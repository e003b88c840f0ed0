//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/e2e/kubenode"
)

// logNetState logs what a failed traffic step needs to be explained: per
// node its links, routes, neighbours, iptables counters, attached programs,
// the clustermesh pods' logs and the agent's pinned maps, and a packet capture on the underlay and the
// tunnel device of every node while try runs once.
func logNetState(t *testing.T, env *kubenode.Env, try func()) {
	t.Helper()
	var b strings.Builder
	for _, c := range env.Clusters {
		n := c.Nodes[0]
		fmt.Fprintf(&b, "===== node %s (%s)\n", n.Name, n.IP)
		for _, args := range [][]string{
			{"ip", "-d", "link", "show"}, {"ip", "route", "show", "table", "all"}, {"ip", "neigh"},
			{"iptables-save", "-c"}, {"bpftool", "net", "show"},
			{"sysctl", "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter", "net.netfilter.nf_conntrack_tcp_be_liberal"},
		} {
			out, err := n.NS.Exec(args[0], args[1:]...)
			fmt.Fprintf(&b, "--- %s (%v)\n%s", strings.Join(args, " "), err, out)
		}
		if l, err := c.CP.Client.CoreV1().Pods("clustermesh-system").List(context.Background(), metav1.ListOptions{}); err == nil {
			for i := range l.Items {
				fmt.Fprintf(&b, "--- log of %s\n%s", l.Items[i].Name, n.PodLogTail(&l.Items[i], 6000))
			}
		}
		_ = filepath.WalkDir(n.BPFFS, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && strings.Contains(p, "/maps/") && !strings.Contains(p, "_ct") && !strings.Contains(p, "revnat") {
				out, _ := exec.Command("bpftool", "map", "dump", "pinned", p).CombinedOutput()
				fmt.Fprintf(&b, "--- map %s\n%s", p, out)
			}
			return nil
		})
	}
	b.WriteString(capture(env, try))
	t.Log(b.String())
}

// capture runs tcpdump (when installed) on eth0 and the tunnel device of
// every node while try runs, and returns what it printed.
func capture(env *kubenode.Env, try func()) string {
	if _, err := exec.LookPath("tcpdump"); err != nil {
		try()
		return "(no tcpdump: no capture)\n"
	}
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var wg sync.WaitGroup
	var b strings.Builder
	for _, c := range env.Clusters {
		for _, dev := range []string{"eth0", "cm_vxlan", "any"} {
			n := c.Nodes[0]
			cmd := exec.CommandContext(ctx, "nsenter", "--net="+n.NS.Path(), "--", "tcpdump", "-nn", "-e", "-l", "-c", "60", "-i", dev, "not port 6443 and not arp")
			wg.Go(func() {
				out, err := cmd.CombinedOutput()
				mu.Lock()
				defer mu.Unlock()
				fmt.Fprintf(&b, "--- tcpdump %s %s (%v)\n%s", n.Name, dev, err, out)
			})
		}
	}
	time.Sleep(time.Second) // let tcpdump attach before the packets it is there for
	try()
	time.Sleep(time.Second)
	cancel()
	wg.Wait()
	return b.String()
}
