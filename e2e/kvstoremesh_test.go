//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/clustermesh/clustermesh/e2e/harness"
	"github.com/clustermesh/clustermesh/internal/meshstatus"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

// requireKVStoreMesh skips t when the shared mesh runs in direct mode
// (E2E_CONNECTION=direct).
func requireKVStoreMesh(t *testing.T, m *harness.Mesh) {
	t.Helper()
	if m.Connection() != harness.ConnectionKVStoreMesh {
		t.Skipf("the mesh runs in connection mode %s", m.Connection())
	}
}

// TestKVStoreMeshKilledUnderTraffic: while a pod of c1 sends new
// connections without pause to a pod of c2 and to a global service whose
// backends are all in c2, c1's clustermesh-apiserver, which runs c1's
// kvstoremesh and the etcd that holds its cache, is SIGKILLed. c1's agents
// notice but keep every entry of c2 they had; c2 meanwhile gains a backend
// and loses a pod. After the restart c1's kvstoremesh reports c2 synced
// and c1's agents converge to c2's new state. Not one request may fail.
func TestKVStoreMeshKilledUnderTraffic(t *testing.T) {
	m := mesh(t)
	requireKVStoreMesh(t, m)
	cl := clientPod(t, m)
	c1, c2, c3 := m.Clusters[0], m.Clusters[1], m.Clusters[2]
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	target, backends, gone, svcAddr := remoteBackends(ctx, t, m, c2, "kvsm")
	before := remoteEntries(ctx, t, c1, c2)

	l := startLoad(cl, target.HTTPAddr(), svcAddr)
	t.Cleanup(func() { l.stop() })
	killed := killAPIServer(t, c1)
	// c1's agents lose the etcd they read c2 from.
	for _, n := range c1.Nodes {
		if err := waitConnected(ctx, n, c2.Name, false); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("every agent of %s saw its cache go away within %v", c1.Name, time.Since(killed).Round(time.Millisecond))

	// c2 changes meanwhile: a third backend, a pod gone. c3 (through its
	// own kvstoremesh) sees both: the change is published.
	added := addPods(ctx, t, c2, "kvsm-new", "kvsm", 1)[0]
	if err := gone.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	addedKey, goneKey := added.IP.String()+"/32", gone.IP.String()+"/32"
	for _, n := range c3.Nodes {
		if err := waitIPCacheChange(ctx, n, addedKey, goneKey); err != nil {
			t.Fatal(err)
		}
	}
	// c1's agents still hold everything they had of c2.
	for _, n := range c1.Nodes {
		ipc, err := n.IPCache(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range append(slices.Clone(backends), target, gone) {
			if ipc[p.IP.String()+"/32"] != c2.ID {
				t.Errorf("kvstoremesh down: agent %s/%s lost the ipcache entry of %s/%s", c1.Name, n.Name, c2.Name, p.Name)
			}
		}
		bs, err := n.Backends(ctx, harness.PodNamespace, "kvsm")
		if err != nil {
			t.Fatal(err)
		}
		if len(bs[c2.Name]) != len(backends) {
			t.Errorf("kvstoremesh down: agent %s/%s has backends %v, want the %d of %s", c1.Name, n.Name, bs, len(backends), c2.Name)
		}
	}
	if got := remoteEntries(ctx, t, c1, c2); !maps.Equal(got, before) {
		t.Errorf("kvstoremesh down: %s's agents hold %v entries of %s, before %v", c1.Name, got, c2.Name, before)
	}
	time.Sleep(time.Until(killed.Add(10 * time.Second))) // at least 10 s of traffic without it
	down := time.Since(killed)

	if err := c1.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	if err := m.WaitReady(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, n := range c1.Nodes {
		if err := waitIPCacheChange(ctx, n, addedKey, goneKey); err != nil {
			t.Error(err)
		}
		if err := n.WaitBackends(ctx, harness.PodNamespace, "kvsm", len(backends)+1, len(backends)+1, 60*time.Second); err != nil {
			t.Error(err)
		}
	}
	converged := time.Since(back)
	// The new kvstoremesh has mirrored c2 (the agents have its change):
	// its status says so.
	err := eventually(60*time.Second, func() error {
		r, err := cachedRemote(ctx, m, c1, c2.Name)
		if err != nil {
			return err
		}
		if !r.Connected || !r.Synced || r.WaitingForCanary || r.LastError != "" {
			return fmt.Errorf("%s's kvstoremesh: %s connected %v, synced %v, waiting for canary %v, last error %q",
				c1.Name, c2.Name, r.Connected, r.Synced, r.WaitingForCanary, r.LastError)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	time.Sleep(2 * time.Second) // traffic after the resync too
	sent, failed, failures := l.stop()
	t.Logf("kvstoremesh of %s down %v; back: agents ready and converged to %s's changes after %v; %d HTTP requests, %d failed",
		c1.Name, down.Round(time.Millisecond), c2.Name, converged.Round(time.Millisecond), sent, failed)
	if failed > 0 {
		t.Errorf("%d requests failed; first: %v", failed, failures)
	}
	if sent < 200 {
		t.Errorf("only %d requests sent: the traffic did not run", sent)
	}
}

// TestRemoteEmptiedEtcdKeepsCache: c2's clustermesh-apiserver is
// restarted with an empty etcd (same cluster name and ID), and c2 changes
// while it is down (a pod gone, a backend added). Its kube-apiserver is
// cut off from it at first, so c1's kvstoremesh connects to an etcd that
// holds users, cluster config and heartbeat but no state and no canary;
// it withdraws nothing: c1's agents keep every entry of c2 (checked every
// 200 ms) and traffic from c1 to c2 keeps working. Once c2's apiserver
// reaches its kube-apiserver and refills its etcd, c1's cache and agents
// converge to c2's new state.
func TestRemoteEmptiedEtcdKeepsCache(t *testing.T) {
	m := mesh(t)
	requireKVStoreMesh(t, m)
	cl := clientPod(t, m)
	c1, c2 := m.Clusters[0], m.Clusters[1]
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	target, backends, gone, svcAddr := remoteBackends(ctx, t, m, c2, "empty")
	var kept []*harness.Pod
	for _, p := range c2.Pods() {
		if p != gone {
			kept = append(kept, p)
		}
	}

	l := startLoad(cl, target.HTTPAddr(), svcAddr)
	t.Cleanup(func() { l.stop() })
	w := watchEntries(ctx, c1.Nodes, c2.ID, prefixes(kept))
	killed := killAPIServer(t, c2)
	if err := gone.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	added := addPods(ctx, t, c2, "empty-new", "empty", 1)[0]
	// c1's kvstoremesh notices and serves c2's last state.
	if err := waitRemoteDown(ctx, m, c2); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s's kvstoremesh saw %s go away within %v", c1.Name, c2.Name, time.Since(killed).Round(time.Millisecond))
	if err := os.RemoveAll(c2.EtcdDataDir()); err != nil {
		t.Fatal(err)
	}
	// c2's apiserver starts on the empty etcd (users, cluster config and
	// heartbeat written at once) but reaches its kube-apiserver only
	// through a proxy that is cut at first: its etcd stays without state
	// and canaries until the proxy lets it through.
	kube := etcdserver.NewProxy(t, c2.CP.REST.Host)
	kubeconfig, err := kubeconfigVia(c2, kube.Endpoint(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// The proxy closes when t ends: c2's apiserver goes back to its own
	// kubeconfig before (cleanups run last first), and the mesh is ready
	// again for the next test.
	t.Cleanup(func() {
		if !c2.APIServer.Exited() {
			c2.APIServer.Stop(5 * time.Second)
		}
		if err := c2.StartAPIServer(context.Background()); err != nil {
			t.Errorf("restart %s's apiserver: %v", c2.Name, err)
			return
		}
		if err := m.WaitReady(context.Background(), 2*time.Minute); err != nil {
			t.Error(err)
		}
	})
	kube.Block()
	started := make(chan error, 1)
	go func() { started <- c2.StartAPIServer(ctx, "--kubeconfig="+kubeconfig) }()
	err = eventually(90*time.Second, func() error {
		r, err := cachedRemote(ctx, m, c1, c2.Name)
		if err != nil {
			return err
		}
		if !r.Connected || r.Synced {
			return fmt.Errorf("%s's kvstoremesh: %s connected %v, synced %v, waiting for canary %v", c1.Name, c2.Name, r.Connected, r.Synced, r.WaitingForCanary)
		}
		return nil
	})
	if err != nil {
		kube.Unblock()
		t.Fatal(err)
	}
	emptied := time.Now()
	r, _ := cachedRemote(ctx, m, c1, c2.Name)
	t.Logf("%s's kvstoremesh connected to %s's empty etcd: synced %v, waiting for canary %v, served %v, entries %v",
		c1.Name, c2.Name, r.Synced, r.WaitingForCanary, r.Served, r.Entries)
	if !r.Served {
		t.Errorf("%s's kvstoremesh no longer serves %s's last state", c1.Name, c2.Name)
	}
	// Five seconds of traffic and looks against the empty remote, then
	// c1's agents must still hold c2's backends.
	time.Sleep(5 * time.Second)
	for _, n := range c1.Nodes {
		bs, err := n.Backends(ctx, harness.PodNamespace, "empty")
		if err != nil {
			t.Fatal(err)
		}
		if len(bs[c2.Name]) != len(backends) {
			t.Errorf("%s's etcd empty: agent %s/%s has backends %v, want the %d of %s", c2.Name, c1.Name, n.Name, bs, len(backends), c2.Name)
		}
	}
	kube.Unblock()
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	t.Logf("%s's etcd was empty for %v with %s's kvstoremesh connected", c2.Name, back.Sub(emptied).Round(time.Millisecond), c1.Name)
	// Watch c1's kvstoremesh until it has c2 synced again.
	var states []string
	err = eventually(3*time.Minute, func() error {
		r, err := cachedRemote(ctx, m, c1, c2.Name)
		if err != nil {
			return err
		}
		s := fmt.Sprintf("connected=%v synced=%v served=%v waitingForCanary=%v", r.Connected, r.Synced, r.Served, r.WaitingForCanary)
		if len(states) == 0 || states[len(states)-1] != s {
			states = append(states, s)
		}
		if !r.Served {
			t.Errorf("%s's kvstoremesh does not serve %s: %s", c1.Name, c2.Name, s)
		}
		if r.Connected && r.Synced && !r.WaitingForCanary {
			return nil
		}
		return fmt.Errorf("%s's kvstoremesh: %s: %s", c1.Name, c2.Name, s)
	})
	if err != nil {
		t.Fatal(err)
	}
	synced := time.Since(back)
	if err := m.WaitReady(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	addedKey, goneKey := added.IP.String()+"/32", gone.IP.String()+"/32"
	for _, n := range c1.Nodes {
		if err := waitIPCacheChange(ctx, n, addedKey, goneKey); err != nil {
			t.Error(err)
		}
		if err := n.WaitBackends(ctx, harness.PodNamespace, "empty", len(backends)+1, len(backends)+1, 60*time.Second); err != nil {
			t.Error(err)
		}
	}
	converged := time.Since(back)
	polls, missing := w.stop()
	sent, failed, failures := l.stop()
	t.Logf("%s's apiserver killed, restarted on an empty etcd, reaching its kube-apiserver %v later; %s's kvstoremesh states of %s since: %s; synced %v and agents converged %v after that",
		c2.Name, back.Sub(killed).Round(time.Millisecond), c1.Name, c2.Name, strings.Join(states, " → "), synced.Round(time.Millisecond), converged.Round(time.Millisecond))
	t.Logf("%d looks at %s's agents' ipcache: %d missed a kept entry of %s; %d HTTP requests, %d failed", polls, c1.Name, len(missing), c2.Name, sent, failed)
	if len(missing) > 0 {
		t.Errorf("%s's agents withdrew entries of %s: %v", c1.Name, c2.Name, missing)
	}
	if failed > 0 {
		t.Errorf("%d requests failed; first: %v", failed, failures)
	}
	if polls < 10 || sent < 200 {
		t.Errorf("only %d looks and %d requests: the checks did not run", polls, sent)
	}
}

// TestEtcdConnectionsPerRemote: on each cluster's etcd, every other
// cluster holds exactly one client connection (its kvstoremesh) in
// connection mode kvstoremesh, one per agent in direct mode.
func TestEtcdConnectionsPerRemote(t *testing.T) {
	testenv.RequireCommand(t, "ss")
	checkEtcdClients(t, mesh(t))
}

// TestDirectConnectionMode runs, on its own mesh of 3 clusters of 2 nodes
// in connection mode direct (every agent connects to every remote etcd),
// pod to pod, the global service, failover and the connection count. It
// is skipped when the shared mesh already runs in direct mode.
func TestDirectConnectionMode(t *testing.T) {
	if os.Getenv("E2E_CONNECTION") == harness.ConnectionDirect {
		t.Skip("the shared mesh runs in connection mode direct")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	kubeBin, bins, dir, log := ownMesh(ctx, t, "direct", "ip", "nsenter", "ping", "mount", "ss")
	m, err := harness.Start(ctx, harness.Config{
		Prefix: "cme", KubeBinDir: kubeBin, Bins: bins, Dir: dir, Log: log,
		AgentArgs: []string{"--failback-share=1"}, Connection: harness.ConnectionDirect,
	})
	if err != nil {
		t.Fatalf("start mesh (logs in %s): %v", dir, err)
	}
	t.Cleanup(m.Close)
	if err := m.WaitReady(ctx, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Run("pod to pod", func(t *testing.T) { podToPod(t, m) })
	t.Run("global service", func(t *testing.T) { globalServiceSpreads(t, m) })
	t.Run("failover", func(t *testing.T) { failoverAndFailback(t, m) })
	t.Run("etcd connections", func(t *testing.T) { checkEtcdClients(t, m) })
}

// checkEtcdClients asserts the client connections on every cluster's etcd
// by the other clusters (harness.EtcdClients) and logs them all.
func checkEtcdClients(t *testing.T, m *harness.Mesh) {
	t.Helper()
	for _, e := range m.Clusters {
		var got map[string]harness.EtcdClients
		err := eventually(30*time.Second, func() error {
			var err error
			if got, err = m.EtcdClients(e); err != nil {
				return err
			}
			for _, o := range m.Clusters {
				if o == e {
					continue
				}
				want := harness.EtcdClients{KVStoreMesh: 1}
				if m.Connection() == harness.ConnectionDirect {
					want = harness.EtcdClients{Agents: len(o.Nodes)}
				}
				if got[o.Name] != want {
					return fmt.Errorf("%s's etcd: %d connections from %s's kvstoremesh and %d from its agents, want %d and %d",
						e.Name, got[o.Name].KVStoreMesh, o.Name, got[o.Name].Agents, want.KVStoreMesh, want.Agents)
				}
			}
			return nil
		})
		var line []string
		for _, name := range slices.Sorted(maps.Keys(got)) {
			who := name
			switch {
			case name == "":
				who = "unattributed"
			case name == e.Name:
				who = "own " + name
			}
			line = append(line, fmt.Sprintf("%s: apiserver %d, agents %d", who, got[name].KVStoreMesh, got[name].Agents))
		}
		t.Logf("connection mode %s, %s's etcd: %s", m.Connection(), e.Name, strings.Join(line, "; "))
		if err != nil {
			t.Error(err)
		}
	}
}

// addPods adds n pods named prefix-<i> (prefix alone for n == 1) with
// label app=app to c's nodes in turn; they are deleted when t ends.
func addPods(ctx context.Context, t *testing.T, c *harness.Cluster, prefix, app string, n int) []*harness.Pod {
	t.Helper()
	var out []*harness.Pod
	for i := range n {
		name := prefix
		if n > 1 {
			name = fmt.Sprintf("%s-%d", prefix, i)
		}
		p, err := c.Nodes[i%len(c.Nodes)].AddPod(ctx, name, map[string]string{"app": app})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if slices.Contains(p.Node.Pods, p) {
				_ = p.Delete(context.Background())
			}
		})
		out = append(out, p)
	}
	return out
}

// remoteBackends adds to c two backend pods (label app=name) and a pod
// that no service selects (name-gone), creates the global Service name
// in the first cluster and in c (serviceOnlyIn), and waits until the first
// cluster's agents have every pod of c in their ipcache. It returns a pod
// of c to send traffic to, the backends, the other pod and the first
// cluster's frontend address.
func remoteBackends(ctx context.Context, t *testing.T, m *harness.Mesh, c *harness.Cluster, name string) (target *harness.Pod, backends []*harness.Pod, gone *harness.Pod, svcAddr string) {
	t.Helper()
	target = c.Nodes[0].Pods[0]
	backends = addPods(ctx, t, c, name, name, 2)
	gone = addPods(ctx, t, c, name+"-gone", name+"-gone", 1)[0]
	svcAddr = serviceOnlyIn(ctx, t, m, name, c, len(backends))
	for _, n := range m.Clusters[0].Nodes {
		if err := waitIPCache(ctx, n, prefixes(c.Pods())); err != nil {
			t.Fatal(err)
		}
	}
	return target, backends, gone, svcAddr
}

// killAPIServer SIGKILLs c's clustermesh-apiserver (and the etcd it
// embeds) and returns when; it is started again when t ends if it is still
// down then.
func killAPIServer(t *testing.T, c *harness.Cluster) time.Time {
	t.Helper()
	c.KillAPIServer()
	killed := time.Now()
	t.Cleanup(func() {
		if c.APIServer.Exited() {
			if err := c.StartAPIServer(context.Background()); err != nil {
				t.Errorf("restart %s's apiserver: %v", c.Name, err)
			}
		}
	})
	return killed
}

// serviceOnlyIn creates the global Service name (selector app=name) in the
// first cluster and in c, whose pods are its only backends, waits until
// the first cluster's agents program want backends of c, and returns the
// first cluster's frontend address.
func serviceOnlyIn(ctx context.Context, t *testing.T, m *harness.Mesh, name string, c *harness.Cluster, want int) string {
	t.Helper()
	ann := map[string]string{"service.cilium.io/global": "true"}
	var vip string
	for _, cc := range []*harness.Cluster{m.Clusters[0], c} {
		ip, err := cc.CreateServiceFor(ctx, name, map[string]string{"app": name}, ann)
		if err != nil {
			t.Fatal(err)
		}
		if cc == m.Clusters[0] {
			vip = ip
		}
	}
	for _, n := range m.Clusters[0].Nodes {
		if err := n.WaitBackends(ctx, harness.PodNamespace, name, want, want, 90*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	return net.JoinHostPort(vip, strconv.Itoa(harness.ServiceHTTPPort))
}

// prefixes returns the ipcache prefixes (/32) of pods.
func prefixes(pods []*harness.Pod) map[string]bool {
	out := map[string]bool{}
	for _, p := range pods {
		out[p.IP.String()+"/32"] = true
	}
	return out
}

// remoteEntries returns, per agent of c and kind, the entries of remote
// it reports.
func remoteEntries(ctx context.Context, t *testing.T, c *harness.Cluster, remote *harness.Cluster) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	for _, n := range c.Nodes {
		st, err := n.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range st.RemoteClusters {
			if r.Name == remote.Name {
				for _, k := range r.Kinds {
					out[n.Name+"/"+k.Kind] = k.Entries
				}
			}
		}
	}
	return out
}

// waitConnected waits until n's agent reports remote connected (or not).
func waitConnected(ctx context.Context, n *harness.Node, remote string, connected bool) error {
	return eventually(60*time.Second, func() error {
		st, err := n.Status(ctx)
		if err != nil {
			return err
		}
		for _, r := range st.RemoteClusters {
			if r.Name == remote && r.Connected != connected {
				return fmt.Errorf("agent %s/%s: %s connected %v, want %v", n.Cluster.Name, n.Name, remote, r.Connected, connected)
			}
		}
		return nil
	})
}

// kubeconfigVia writes a copy of c's admin kubeconfig whose server is
// server into dir and returns its path.
func kubeconfigVia(c *harness.Cluster, server, dir string) (string, error) {
	kc, err := clientcmd.LoadFromFile(c.CP.Kubeconfig())
	if err != nil {
		return "", err
	}
	for _, cl := range kc.Clusters {
		cl.Server = server
	}
	path := filepath.Join(dir, "kubeconfig")
	return path, clientcmd.WriteToFile(*kc, path)
}

// cachedRemote returns c's kvstoremesh status of remote.
func cachedRemote(ctx context.Context, m *harness.Mesh, c *harness.Cluster, remote string) (meshstatus.CachedRemote, error) {
	rs, err := m.KVStoreMesh(ctx, c)
	if err != nil {
		return meshstatus.CachedRemote{}, err
	}
	for _, r := range rs {
		if r.Name == remote {
			return r, nil
		}
	}
	return meshstatus.CachedRemote{}, fmt.Errorf("%s's kvstoremesh does not list %s", c.Name, remote)
}

// waitIPCacheChange waits until n's agent has the ipcache entry added and
// not gone.
func waitIPCacheChange(ctx context.Context, n *harness.Node, added, gone string) error {
	return eventually(60*time.Second, func() error {
		ipc, err := n.IPCache(ctx)
		if err != nil {
			return err
		}
		if _, ok := ipc[added]; !ok {
			return fmt.Errorf("agent %s/%s: no ipcache entry %s", n.Cluster.Name, n.Name, added)
		}
		if _, ok := ipc[gone]; ok {
			return fmt.Errorf("agent %s/%s: stale ipcache entry %s", n.Cluster.Name, n.Name, gone)
		}
		return nil
	})
}

// entryWatch looks at the ipcache of some agents every 200 ms and records
// every look that misses one of the wanted entries.
type entryWatch struct {
	done    chan struct{}
	wg      sync.WaitGroup
	polls   int
	missing []string
}

func watchEntries(ctx context.Context, nodes []*harness.Node, cluster uint32, want map[string]bool) *entryWatch {
	w := &entryWatch{done: make(chan struct{})}
	w.wg.Go(func() {
		for {
			for _, n := range nodes {
				ipc, err := n.IPCache(ctx)
				if err != nil {
					continue // the agent's socket is busy or the context ended
				}
				w.polls++
				for _, p := range slices.Sorted(maps.Keys(want)) {
					if ipc[p] != cluster && len(w.missing) < 20 {
						w.missing = append(w.missing, fmt.Sprintf("%s %s/%s: %s", time.Now().Format("15:04:05.000"), n.Cluster.Name, n.Name, p))
					}
				}
			}
			select {
			case <-w.done:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	})
	return w
}

// stop ends the watch and returns how many looks it took and the misses.
func (w *entryWatch) stop() (int, []string) {
	close(w.done)
	w.wg.Wait()
	return w.polls, w.missing
}
