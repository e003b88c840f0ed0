package kvstoremesh

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/internal/testwait"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/remoteconn"
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
	wait    = 30 * time.Second
)

var testLog = etcdserver.TestLogger()

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// source is an embedded etcd playing a remote cluster's kvstore, written
// with raw puts of wire values as its clustermesh-apiserver does, behind a
// proxy the test can cut.
type source struct {
	t     *testing.T
	name  string
	id    uint32
	srv   *etcdserver.Server
	admin *kvstore.Client
	proxy *etcdserver.Proxy
}

func startSource(t *testing.T, name string, id uint32) *source {
	t.Helper()
	s := &source{t: t, name: name, id: id}
	s.start(etcdserver.Config{ClusterName: name})
	s.proxy = etcdserver.NewProxy(t, s.srv.Endpoints()[0])
	return s
}

func (s *source) start(cfg etcdserver.Config) {
	s.t.Helper()
	s.srv = etcdserver.StartTest(s.t, cfg)
	admin, err := kvstore.New(context.Background(), s.srv.AdminConfig(), testLog)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { admin.Close() })
	s.admin = admin
	s.put(wire.ClusterConfigKey(s.name), must(json.Marshal(wire.ClusterConfig{ID: s.id,
		Capabilities: wire.Capabilities{SyncedCanaries: true, MaxConnectedClusters: 255}})))
}

// replace swaps the etcd for an empty one (new data dir, new etcd cluster
// ID) on the same address, holding only the cluster config and the reader's
// user: an apiserver restarted with an ephemeral etcd, before it has
// published anything.
func (s *source) replace() {
	s.t.Helper()
	s.srv.Stop()
	cfg := s.srv.Config()
	cfg.DataDir, cfg.InitialCluster, cfg.InitialClusterToken = filepath.Join(s.t.TempDir(), "etcd-new"), "", ""
	s.admin.Close()
	s.start(cfg)
	if _, err := s.srv.EnsureRemoteUser(context.Background(), ownName); err != nil {
		s.t.Fatal(err)
	}
}

func (s *source) put(key string, value []byte) {
	s.t.Helper()
	if _, err := s.admin.Etcd().Put(context.Background(), key, string(value)); err != nil {
		s.t.Fatalf("put %s: %v", key, err)
	}
}

func (s *source) del(key string) {
	s.t.Helper()
	if _, err := s.admin.Etcd().Delete(context.Background(), key); err != nil {
		s.t.Fatalf("delete %s: %v", key, err)
	}
}

func (s *source) canaries() {
	for _, k := range wire.Kinds() {
		s.put(wire.SyncedKey(s.name, k), wire.FormatTimestamp(time.Now()))
	}
}

// state writes node i (with pod i), an identity and a service, and
// returns the cache keys and values they must be mirrored as.
func (s *source) state(i int) map[string]string {
	node := fmt.Sprintf("n%d", i)
	nodeVal := must(wire.MarshalNode(wire.Node{
		Name: node, Cluster: s.name, ClusterID: s.id,
		IPAddresses:   []wire.NodeAddress{{Type: wire.NodeInternalIP, IP: netip.MustParseAddr(fmt.Sprintf("192.168.%d.%d", s.id, i))}},
		IPv4AllocCIDR: wire.MustParseCIDR(fmt.Sprintf("10.%d.%d.0/24", s.id, i)),
	}))
	id := s.id<<16 | uint32(256+i)
	idVal := must(wire.MarshalIdentity(wire.Identity{ID: id, Labels: must(wire.NewLabels(
		wire.Label{Source: "k8s", Key: "app", Value: node},
		wire.Label{Source: "k8s", Key: wire.ClusterLabelKey, Value: s.name},
	))}))
	ip := netip.MustParseAddr(fmt.Sprintf("10.%d.%d.1", s.id, i))
	ipVal := must(wire.MarshalIPIdentityPair(wire.IPIdentityPair{IP: ip, HostIP: netip.MustParseAddr(fmt.Sprintf("192.168.%d.%d", s.id, i)), ID: id}))
	svc := fmt.Sprintf("svc%d", i)
	svcVal := must(wire.MarshalService(wire.ClusterService{
		Cluster: s.name, Namespace: "shop", Name: svc, ClusterID: s.id, Shared: true,
		Frontends: map[string]wire.Ports{"10.96.0.10": {"http": {Protocol: wire.TCP, Port: 80}}},
		Backends:  map[string]wire.Ports{ip.String(): {"http": {Protocol: wire.TCP, Port: 8080}}},
	}))
	s.put(wire.NodeKey(s.name, node), nodeVal)
	s.put(wire.IdentityKey(id), idVal)
	s.put(wire.IPKey(ip), ipVal)
	s.put(wire.ServiceKey(s.name, "shop", svc), svcVal)
	return map[string]string{
		wire.CachedNodeKey(s.name, node):           string(nodeVal),
		wire.CachedIdentityKey(s.name, id):         string(idVal),
		wire.CachedIPKey(s.name, ip):               string(ipVal),
		wire.CachedServiceKey(s.name, "shop", svc): string(svcVal),
	}
}

// deleteState deletes what state(i) wrote and the keys from want.
func (s *source) deleteState(i int, want map[string]string) {
	id := s.id<<16 | uint32(256+i)
	ip := netip.MustParseAddr(fmt.Sprintf("10.%d.%d.1", s.id, i))
	s.del(wire.NodeKey(s.name, fmt.Sprintf("n%d", i)))
	s.del(wire.IdentityKey(id))
	s.del(wire.IPKey(ip))
	s.del(wire.ServiceKey(s.name, "shop", fmt.Sprintf("svc%d", i)))
	delete(want, wire.CachedNodeKey(s.name, fmt.Sprintf("n%d", i)))
	delete(want, wire.CachedIdentityKey(s.name, id))
	delete(want, wire.CachedIPKey(s.name, ip))
	delete(want, wire.CachedServiceKey(s.name, "shop", fmt.Sprintf("svc%d", i)))
}

// writeConfig writes the config file of this remote into dir: through the
// proxy, as the read-only user of the own cluster.
func (s *source) writeConfig(dir string) {
	s.t.Helper()
	cfg, err := s.srv.EnsureRemoteUser(context.Background(), ownName)
	if err != nil {
		s.t.Fatal(err)
	}
	cfg.Endpoints = []string{s.proxy.Endpoint()}
	writeFile(s.t, filepath.Join(dir, s.name), must(json.Marshal(cfg)))
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// local is the own cluster's etcd with a running Mesh.
type local struct {
	t      *testing.T
	srv    *etcdserver.Server
	admin  *kvstore.Client
	mesh   *Mesh
	dir    string
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func testConfig(dir string) Config {
	return Config{
		Dir: dir, Own: remoteconn.Own{Name: ownName, ID: ownID, MaxConnectedClusters: 255},
		Timing: remoteconn.Timing{
			BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
			ProbeInterval: 50 * time.Millisecond, ProbeTimeout: 2 * time.Second, RescanInterval: time.Second,
		},
	}
}

func startLocal(t *testing.T, mod func(*Config)) *local {
	t.Helper()
	l := &local{t: t, dir: t.TempDir()}
	l.srv = etcdserver.StartTest(t, etcdserver.Config{ClusterName: ownName})
	admin, err := kvstore.New(context.Background(), l.srv.AdminConfig(), testLog)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	l.admin = admin
	l.startMesh(mod)
	return l
}

func (l *local) startMesh(mod func(*Config)) {
	cfg := testConfig(l.dir)
	if mod != nil {
		mod(&cfg)
	}
	l.mesh = New(cfg, l.admin, testLog, clock.RealClock{})
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	l.wg.Go(func() {
		if err := l.mesh.Run(ctx); err != nil {
			l.t.Errorf("Run: %v", err)
		}
	})
	l.t.Cleanup(l.stopMesh)
}

func (l *local) stopMesh() {
	l.cancel()
	l.wg.Wait()
}

// dump returns key → value under p.
func (l *local) dump(p string) map[string]string {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := l.admin.Etcd().Get(ctx, p, clientv3.WithPrefix())
	if err != nil {
		l.t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = string(kv.Value)
	}
	return out
}

// cache returns the cache keys of cluster name.
func (l *local) cache(name string) map[string]string {
	out := map[string]string{}
	for _, k := range wire.Kinds() {
		maps.Copy(out, l.dump(wire.KindCachePrefix(k, name)))
	}
	return out
}

func (l *local) status(name string) Status {
	for _, s := range l.mesh.Status() {
		if s.Name == name {
			return s
		}
	}
	return Status{}
}

// awaitCache waits until the cache of name equals want.
func (l *local) awaitCache(what, name string, want map[string]string) {
	l.t.Helper()
	testwait.Until(l.t, wait, what, func() (bool, string) {
		got := l.cache(name)
		return maps.Equal(got, want), fmt.Sprintf("%d cache keys, want %d", len(got), len(want))
	})
}

// configCopy returns the cluster config copy of remote name; a synced
// status implies it is written.
func (l *local) configCopy(name string) string {
	l.t.Helper()
	key := wire.ClusterConfigKey(name)
	v, ok := l.dump(key)[key]
	if !ok {
		l.t.Fatalf("no cluster config copy of %s", name)
	}
	return v
}

func (l *local) awaitStatus(what, name string, cond func(Status) bool) {
	l.t.Helper()
	testwait.Until(l.t, wait, what, func() (bool, string) {
		st := l.status(name)
		return cond(st), fmt.Sprintf("%+v", st)
	})
}

func (s Status) kind(k wire.Kind) KindStatus {
	for _, ks := range s.Kinds {
		if ks.Kind == string(k) {
			return ks
		}
	}
	return KindStatus{}
}
