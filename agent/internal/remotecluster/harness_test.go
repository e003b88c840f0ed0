package remotecluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/agent/internal/dpsync"
	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// etcd's embedded server keeps idle HTTP keep-alive connections that
		// embed.Etcd.Close does not close (see kvstore/etcdserver).
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
		goleak.IgnoreAnyFunction("net/http.(*connReader).backgroundRead"),
	)
}

const (
	ownName = "c1"
	ownID   = 1
)

var log = etcdserver.TestLogger()

// proxy is a TCP proxy in front of a remote etcd that a test can cut, to
// make the remote unreachable for the agent only.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	up     bool
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

func startProxy(t testing.TB, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, up: true, conns: map[net.Conn]bool{}}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		ln.Close()
		p.setUp(false)
		p.wg.Wait()
	})
	return p
}

func (p *proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if !p.up {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c] = true
		p.mu.Unlock()
		p.wg.Go(func() {
			defer func() { p.mu.Lock(); delete(p.conns, c); p.mu.Unlock(); c.Close() }()
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns[u] = true
			p.mu.Unlock()
			defer func() { p.mu.Lock(); delete(p.conns, u); p.mu.Unlock(); u.Close() }()
			splice(c, u)
		})
	}
}

// splice copies between a and b both ways until one side ends, then
// closes both.
func splice(a, b net.Conn) {
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(b, a); done <- struct{}{} }()
	go func() { _, _ = io.Copy(a, b); done <- struct{}{} }()
	<-done
	a.Close()
	b.Close()
	<-done
}

// setUp lets connections through (true) or cuts every one (false).
func (p *proxy) setUp(up bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.up = up
	if !up {
		for c := range p.conns {
			c.Close()
		}
	}
}

func (p *proxy) endpoint() string { return "https://" + p.ln.Addr().String() }

// remoteEtcd is an embedded etcd playing a remote cluster's kvstore, written
// with raw puts of wire-encoded values as the clustermesh-apiserver does.
type remoteEtcd struct {
	t     testing.TB
	name  string
	id    uint32
	srv   *etcdserver.Server
	admin *kvstore.Client
	proxy *proxy
}

func startRemote(t testing.TB, name string, id uint32) *remoteEtcd {
	t.Helper()
	srv := etcdserver.StartTest(t, etcdserver.Config{ClusterName: name})
	ctx := context.Background()
	admin, err := kvstore.New(ctx, srv.AdminConfig(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	r := &remoteEtcd{t: t, name: name, id: id, srv: srv, admin: admin, proxy: startProxy(t, strings.TrimPrefix(srv.Endpoints()[0], "https://"))}
	r.clusterConfig(id)
	return r
}

func (r *remoteEtcd) put(key string, value []byte) {
	r.t.Helper()
	if _, err := r.admin.Etcd().Put(context.Background(), key, string(value)); err != nil {
		r.t.Fatalf("put %s: %v", key, err)
	}
}

func (r *remoteEtcd) del(key string) {
	r.t.Helper()
	if _, err := r.admin.Etcd().Delete(context.Background(), key); err != nil {
		r.t.Fatalf("delete %s: %v", key, err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func (r *remoteEtcd) clusterConfig(id uint32) {
	r.put(wire.ClusterConfigKey(r.name), must(json.Marshal(wire.ClusterConfig{ID: id,
		Capabilities: wire.Capabilities{SyncedCanaries: true, MaxConnectedClusters: 255}})))
}

func (r *remoteEtcd) canaries() {
	for _, k := range wire.Kinds() {
		r.put(wire.SyncedKey(r.name, k), wire.FormatTimestamp(time.Now()))
	}
}

// nodeCIDR is the pod CIDR of node i of cluster id.
func nodeCIDR(id uint32, i int) string { return fmt.Sprintf("10.%d.%d.0/24", id, i) }
func nodeIP(id uint32, i int) string   { return fmt.Sprintf("192.168.%d.%d", id, i) }
func podIP(id uint32, i int) string    { return fmt.Sprintf("10.%d.%d.%d", id, i/200, 1+i%200) }

func (r *remoteEtcd) node(i int) {
	r.put(wire.NodeKey(r.name, fmt.Sprintf("n%d", i)), must(wire.MarshalNode(wire.Node{
		Name: fmt.Sprintf("n%d", i), Cluster: r.name, ClusterID: r.id,
		IPAddresses:   []wire.NodeAddress{{Type: wire.NodeInternalIP, IP: netip.MustParseAddr(nodeIP(r.id, i))}},
		IPv4AllocCIDR: wire.MustParseCIDR(nodeCIDR(r.id, i)),
	})))
}

func (r *remoteEtcd) identity(local uint32) uint32 { return r.id<<16 | local }

func (r *remoteEtcd) ipcache(i int) {
	ip := netip.MustParseAddr(podIP(r.id, i))
	r.put(wire.IPKey(ip), must(wire.MarshalIPIdentityPair(wire.IPIdentityPair{
		IP: ip, HostIP: netip.MustParseAddr(nodeIP(r.id, i/200)), ID: r.identity(256 + uint32(i%10)),
	})))
}

func (r *remoteEtcd) identityEntry(local uint32) {
	ls := must(wire.NewLabels(
		wire.Label{Source: "k8s", Key: "app", Value: "web"},
		wire.Label{Source: "k8s", Key: wire.ClusterLabelKey, Value: r.name},
	))
	id := r.identity(local)
	r.put(wire.IdentityKey(id), must(wire.MarshalIdentity(wire.Identity{ID: id, Labels: ls})))
}

func (r *remoteEtcd) service(ns, name string, shared bool, backends ...string) {
	bs := map[string]wire.Ports{}
	for _, b := range backends {
		bs[b] = wire.Ports{"http": {Protocol: wire.TCP, Port: 8080}}
	}
	r.put(wire.ServiceKey(r.name, ns, name), must(wire.MarshalService(wire.ClusterService{
		Cluster: r.name, Namespace: ns, Name: name, ClusterID: r.id, Shared: shared,
		Frontends: map[string]wire.Ports{"10.96.0.10": {"http": {Protocol: wire.TCP, Port: 80}}},
		Backends:  bs,
	})))
}

// writeConfig writes the agent's config file for this remote into dir,
// pointing at the proxy, with the remote user of the own cluster.
func (r *remoteEtcd) writeConfig(dir string) {
	r.t.Helper()
	cfg, err := r.srv.EnsureRemoteUser(context.Background(), ownName)
	if err != nil {
		r.t.Fatal(err)
	}
	cfg.Endpoints = []string{r.proxy.endpoint()}
	writeFile(r.t, filepath.Join(dir, r.name), must(json.Marshal(cfg)))
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(filepath.Join(filepath.Dir(path), "."+filepath.Base(tmp)), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(filepath.Dir(path), "."+filepath.Base(tmp)), path); err != nil {
		t.Fatal(err)
	}
}

// agent is the part of the agent under test: reconciler, merger, manager.
type agent struct {
	dp     *memory.Datapath
	rec    *dpsync.Reconciler
	merger *servicemerge.Merger
	mgr    *Manager
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func testConfig(dir, stateDir string) Config {
	return Config{
		Dir: dir, StateDir: stateDir, ClusterName: ownName, ClusterID: ownID, MaxConnectedClusters: 255,
		BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
		ProbeInterval: 50 * time.Millisecond, ProbeTimeout: 2 * time.Second, RescanInterval: time.Second,
	}
}

// startAgent runs an agent on dp; w, if not nil, wraps dp.
func startAgent(t testing.TB, cfg Config, dp *memory.Datapath, w datapath.Writer) *agent {
	t.Helper()
	a := &agent{dp: dp}
	if w == nil {
		w = dp
	}
	a.rec = dpsync.New(dpsync.Config{ClusterID: ownID}, w, log, clock.RealClock{})
	if _, err := a.rec.Restore(); err != nil {
		t.Fatal(err)
	}
	a.merger = servicemerge.New(servicemerge.Config{ClusterID: ownID, FailbackShare: 0.5}, a.rec)
	a.mgr = New(cfg, a.rec, a.merger, log, clock.RealClock{})
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.wg.Go(func() { _ = a.rec.Run(ctx) })
	a.wg.Go(func() { _ = a.merger.Run(ctx) })
	a.wg.Go(func() { _ = a.mgr.Run(ctx) })
	t.Cleanup(a.stop)
	return a
}

func (a *agent) stop() {
	a.cancel()
	a.wg.Wait()
}

func (a *agent) status(name string) Status {
	for _, s := range a.mgr.Status() {
		if s.Name == name {
			return s
		}
	}
	return Status{}
}

func (s Status) kind(k string) KindStatus {
	for _, ks := range s.Kinds {
		if ks.Kind == k {
			return ks
		}
	}
	return KindStatus{}
}

// await waits on the datapath's change notifications (and, for status
// conditions, a short poll) until cond holds.
func await(t *testing.T, dp *memory.Datapath, what string, cond func(datapath.State) bool) datapath.State {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		ch := dp.Changed()
		st, _ := dp.Dump()
		if cond(st) {
			return st
		}
		select {
		case <-ch:
		case <-time.After(50 * time.Millisecond): // status-only conditions change without an Apply
		case <-timeout:
			t.Fatalf("%s: timed out; tunnels %d ipcache %d services %d", what, len(st.Tunnels), len(st.IPCache), len(st.Services))
		}
	}
}

func countCluster(st datapath.State, id uint32) (tunnels, ipcache int) {
	for _, e := range st.Tunnels {
		if e.ClusterID == id {
			tunnels++
		}
	}
	for _, e := range st.IPCache {
		if e.ClusterID == id {
			ipcache++
		}
	}
	return
}
