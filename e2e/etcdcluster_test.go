//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/clustermesh/clustermesh/e2e/harness"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

// TestKVStoreMemberLoss: cluster c9's kvstore is a 3-member etcd cluster
// run by the test, joined the production way: its CA becomes c9's
// clustermesh-ca, `clustermesh enable` installs the chart in external etcd
// mode with the members' endpoints, `clustermesh connect` joins c1 and c9,
// and c9's clustermesh-apiserver (--kvstore-config, --remote-users-file)
// creates the read-only user of c1 in that etcd. c1's agents list all
// three members, as connect wrote them. Stopping the member that leads raft
// and is first in the agents' list must break nothing: c1's agents stay
// or come back ready, the old pods of c9 stay reachable throughout, and a
// pod added to c9 afterwards becomes reachable from c1 (the apiserver
// keeps publishing, the agents keep watching) with 2 of 3 members.
func TestKVStoreMemberLoss(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	kubeBin, bins, dir, log := ownMesh(ctx, t, "kvstore-member-loss", "ip", "nsenter", "ping", "mount")

	before := goleak.IgnoreCurrent()
	start := time.Now()
	members, err := etcdserver.StartCluster(ctx, etcdserver.Config{
		ClusterName: "c9", Name: "c9-etcd", DataDir: filepath.Join(dir, "external-etcd"),
		Hosts: []string{harness.Gateway().String()}, UnsafeNoFsync: true,
	}, 3, log.With("component", "external-etcd"))
	if err != nil {
		t.Fatalf("start the external etcd: %v", err)
	}
	ms := harness.EtcdMembers(members)
	// Registered first, so it runs after the mesh is closed.
	t.Cleanup(func() {
		for _, s := range ms {
			s.Stop()
		}
		// etcd's peer connections renew their read deadline (5 s) on every
		// read, so the HTTP goroutines of a stopped member may wait that
		// long for a pending read: let them end before TestMain's leak check.
		if err := eventually(20*time.Second, func() error {
			return goleak.Find(before,
				goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"),
				goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
				goleak.IgnoreAnyFunction("golang.org/x/net/http2.(*ClientConn).readLoop"))
		}); err != nil {
			t.Logf("goroutines left by the external etcd: %v", err)
		}
	})
	t.Logf("external etcd of c9: 3 members %v in %v", etcdserver.JoinEndpoints(members...), time.Since(start).Round(time.Millisecond))

	m, err := harness.Start(ctx, harness.Config{
		Prefix: "cme", Clusters: []harness.ClusterSpec{{Name: "c1", ID: 1}, {Name: "c9", ID: 9}},
		KubeBinDir: kubeBin, Bins: bins, Dir: dir, Log: log,
		Join: harness.JoinCLI, ExternalEtcd: map[string]harness.EtcdMembers{"c9": ms},
		// The harness runs the kvstoremesh only with embedded etcds.
		Connection: harness.ConnectionDirect,
	})
	if err != nil {
		t.Fatalf("start mesh (logs in %s): %v", dir, err)
	}
	t.Cleanup(m.Close)
	if err := m.WaitReady(ctx, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	c1, c9 := m.Cluster("c1"), m.Cluster("c9")
	t.Logf("mesh ready %v after start", time.Since(start).Round(time.Millisecond))
	if err := checkEndpoints(c1, "c9", ms); err != nil {
		t.Fatal(err)
	}

	// Both ways, through both etcds: c1 reads c9's external etcd, c9 reads
	// c1's embedded one.
	for _, pair := range [][2]*harness.Cluster{{c1, c9}, {c9, c1}} {
		for _, from := range pair[0].Pods() {
			for _, to := range pair[1].Pods() {
				if err := reach(from, to, pair[1].Name, 30*time.Second); err != nil {
					t.Fatalf("before the stop: %v", err)
				}
				if err := from.Ping(to.IP, 2*time.Second); err != nil {
					t.Fatalf("before the stop: %s/%s → %s/%s icmp: %v", pair[0].Name, from.Name, pair[1].Name, to.Name, err)
				}
			}
		}
	}

	// Member 0 is the first endpoint in c1's agents' config and in c9's
	// apiserver's: make it the leader too, then stop it.
	if err := ms.MoveLeader(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if l, err := ms.Leader(ctx); err != nil || l != 0 {
		t.Fatalf("leader is member %d (%v), want 0", l, err)
	}
	old := c9.Pods()
	client := c1.Pods()[0]

	// The old pods of c9, probed from c1 every 200 ms until the end.
	type failure struct {
		at  time.Time
		err error
	}
	var (
		probeMu  sync.Mutex
		failures []failure // guarded by probeMu
		probes   int       // guarded by probeMu
	)
	stopProbe := make(chan struct{}) // closed to end the prober
	var probeWG sync.WaitGroup
	probeWG.Go(func() {
		for {
			for _, to := range old {
				s, err := client.HTTP(to.HTTPAddr(), 2*time.Second)
				if err == nil && (s.Cluster != "c9" || s.Pod != to.Name) {
					err = fmt.Errorf("answered by %v", s)
				}
				probeMu.Lock()
				probes++
				if err != nil {
					failures = append(failures, failure{time.Now(), err})
				}
				probeMu.Unlock()
			}
			select {
			case <-stopProbe:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	})
	endProbe := sync.OnceFunc(func() {
		close(stopProbe)
		probeWG.Wait()
	})
	defer endProbe() // also on t.Fatal

	stopAt := time.Now()
	ms[0].Stop()
	t.Logf("stopped member %s (leader, first endpoint) in %v", ms[0].Config().Name, time.Since(stopAt).Round(time.Millisecond))
	if err := eventually(30*time.Second, func() error {
		l, err := ms.Leader(ctx)
		if err == nil {
			t.Logf("member %s leads %v after the stop", ms[l].Config().Name, time.Since(stopAt).Round(time.Millisecond))
		}
		return err
	}); err != nil {
		t.Fatalf("2 of 3 members elect no leader: %v", err)
	}

	// (b) A pod added to c9 after the stop: its Pod object goes to c9's
	// kube-apiserver, c9's apiserver publishes its IP into the remaining
	// members, c1's agents get it by their watches.
	added := time.Now()
	np, err := c9.Nodes[0].AddPod(ctx, "echo-after-stop", map[string]string{"app": "echo"})
	if err != nil {
		t.Fatal(err)
	}
	for _, from := range c1.Pods() {
		if err := reach(from, np, "c9", 30*time.Second); err != nil {
			t.Fatalf("new pod after the stop: %v (c1 agent: %s)", err, statusLine(ctx, c1.Nodes[0]))
		}
		if err := from.Ping(np.IP, 2*time.Second); err != nil {
			t.Fatalf("new pod after the stop: %s → %s icmp: %v", from.Name, np.Name, err)
		}
	}
	t.Logf("pod %s added %v after the stop, reachable from every c1 pod %v after its creation",
		np.Name, added.Sub(stopAt).Round(time.Millisecond), time.Since(added).Round(time.Millisecond))

	// (a) c1's agents: connected and ready through at least two of their
	// probes (every 10 s) of an endpoint list whose first member is gone.
	var flaps []string
	for time.Since(stopAt) < 25*time.Second {
		for _, n := range c1.Nodes {
			st, err := n.Status(ctx)
			if err != nil {
				flaps = append(flaps, fmt.Sprintf("+%v %s: %v", time.Since(stopAt).Round(time.Millisecond), n.Name, err))
				continue
			}
			for _, r := range st.RemoteClusters {
				if r.Name == "c9" && (!r.Ready || !r.Connected) {
					flaps = append(flaps, fmt.Sprintf("+%v %s: c9 ready %v connected %v %s", time.Since(stopAt).Round(time.Millisecond), n.Name, r.Ready, r.Connected, r.LastError))
				}
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	if len(flaps) > 0 {
		t.Errorf("c1's agents reported c9 not connected or not ready %d times after the stop: first %s, last %s", len(flaps), flaps[0], flaps[len(flaps)-1])
	} else {
		t.Logf("c1's agents reported c9 connected and ready at every look for %v after the stop", time.Since(stopAt).Round(time.Second))
	}
	if err := m.WaitReady(ctx, time.Minute); err != nil {
		t.Fatalf("after the stop: %v", err)
	}
	if err := c9.APIServerReady(ctx); err != nil {
		t.Fatalf("after the stop: %v", err)
	}
	// New traffic to every pod of c9, both ways.
	for _, to := range c9.Pods() {
		if err := reach(client, to, "c9", 10*time.Second); err != nil {
			t.Errorf("after the stop: %v", err)
		}
	}
	for _, to := range c1.Pods() {
		if err := reach(np, to, "c1", 10*time.Second); err != nil {
			t.Errorf("after the stop: %v", err)
		}
	}

	// (c) The old pods answered throughout.
	endProbe()
	probeMu.Lock()
	defer probeMu.Unlock()
	t.Logf("old pods of c9 probed %d times from c1 over %v after the stop: %d failed", probes, time.Since(stopAt).Round(time.Second), len(failures))
	for _, f := range failures {
		t.Errorf("old pod probe %v after the stop: %v", f.at.Sub(stopAt).Round(time.Millisecond), f.err)
	}
}

// reach retries an HTTP request from pod from to pod to until cluster's
// pod to answers it, for up to timeout.
func reach(from, to *harness.Pod, cluster string, timeout time.Duration) error {
	return eventually(timeout, func() error {
		s, err := from.HTTP(to.HTTPAddr(), 2*time.Second)
		if err == nil && (s.Cluster != cluster || s.Pod != to.Name) {
			err = fmt.Errorf("answered by %v", s)
		}
		if err != nil {
			return fmt.Errorf("%s → %s/%s: %w", from.Name, cluster, to.Name, err)
		}
		return nil
	})
}

// statusLine is n's agent status as text, or the error getting it.
func statusLine(ctx context.Context, n *harness.Node) string {
	out, err := n.StatusText(ctx, "table")
	if err != nil {
		return err.Error()
	}
	return out
}

// checkEndpoints checks that r's agents' config of cluster e (from the
// remote-clusters Secret `clustermesh connect` wrote) lists every member of
// ms, in order, at the gateway, where the node namespaces reach them.
func checkEndpoints(r *harness.Cluster, e string, ms harness.EtcdMembers) error {
	data, err := os.ReadFile(filepath.Join(r.ConfigDir, e))
	if err != nil {
		return err
	}
	cfg, err := kvstore.ParseConfig(data)
	if err != nil {
		return fmt.Errorf("%s's config of %s: %w", r.Name, e, err)
	}
	var want []string
	for _, s := range ms {
		u, err := url.Parse(s.Config().ClientURL)
		if err != nil {
			return err
		}
		want = append(want, "https://"+net.JoinHostPort(harness.Gateway().String(), u.Port()))
	}
	if !slices.Equal(cfg.Endpoints, want) {
		return fmt.Errorf("%s's config of %s lists %v, want %v", r.Name, e, cfg.Endpoints, want)
	}
	return nil
}
