package localidentity_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/clustermesh/clustermesh/agent/internal/localidentity"
	"github.com/clustermesh/clustermesh/internal/testwait"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var log = slog.New(slog.DiscardHandler)

// TestIdentitiesFromOwnEtcd writes identities as the cluster's
// clustermesh-apiserver does (into a real etcd, canaries included) and reads
// them as the agents' user local-reader, after two failed connection
// attempts: pod addresses get their identity, labels
// are reported, changes and deletes are announced, and values outside the
// cluster's identity range are refused.
func TestIdentitiesFromOwnEtcd(t *testing.T) {
	srv := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "c1"})
	ctx, cancel := context.WithCancel(context.Background())
	admin, err := kvstore.New(ctx, srv.AdminConfig(), log)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	put := func(k string, v []byte) {
		t.Helper()
		if _, err := admin.Etcd().Put(ctx, k, string(v)); err != nil {
			t.Fatal(err)
		}
	}
	http := []wire.NamedPort{{Name: "http", Port: 8080, Protocol: wire.TCP}}
	pod := func(ip string, id uint32) {
		t.Helper()
		v, err := wire.MarshalIPIdentityPair(wire.IPIdentityPair{IP: netip.MustParseAddr(ip), ID: id, HostIP: netip.MustParseAddr("192.168.0.1"), NamedPorts: http})
		if err != nil {
			t.Fatal(err)
		}
		put(wire.IPKey(netip.MustParseAddr(ip)), v)
	}
	web := wire.Identity{ID: 1<<16 | 300, Labels: mustLabels(t, "k8s:app=web;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=shop;")}
	v, err := wire.MarshalIdentity(web)
	if err != nil {
		t.Fatal(err)
	}
	put(wire.IdentityKey(web.ID), v)
	pod("10.1.1.5", web.ID)
	pod("10.1.1.6", 2<<16|300) // another cluster's range: refused
	for _, k := range []wire.Kind{wire.KindIP, wire.KindIdentities} {
		put(wire.SyncedKey("c1", k), wire.FormatTimestamp(time.Now()))
	}

	// The agents' user; the first two attempts fail as an unreachable
	// etcd does, and the watcher tries again.
	ucfg, err := srv.EnsureLocalReaderUser(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var attempts atomic.Int32
	connect := func(ctx context.Context) (*kvstore.Client, error) {
		if attempts.Add(1) <= 2 {
			return nil, kvstore.ErrUnreachable
		}
		return kvstore.New(ctx, ucfg, log)
	}
	var mu sync.Mutex
	changed := map[netip.Addr]int{}
	labels := map[uint32]wire.Labels{}
	ports := map[uint32]int{} // endpoints with http=8080/TCP per identity
	w := localidentity.New(localidentity.Config{ClusterName: "c1", ClusterID: 1,
		OnChange: func(ip netip.Addr) { mu.Lock(); changed[ip]++; mu.Unlock() },
		OnIdentity: func(id uint32, ls wire.Labels) {
			mu.Lock()
			defer mu.Unlock()
			if ls == nil {
				delete(labels, id)
				return
			}
			labels[id] = ls
		},
		OnEndpointPorts: func(oldID uint32, old []wire.NamedPort, curID uint32, cur []wire.NamedPort) {
			mu.Lock()
			defer mu.Unlock()
			if oldID != 0 && slices.Equal(old, http) {
				ports[oldID]--
			}
			if curID != 0 && slices.Equal(cur, http) {
				ports[curID]++
			}
		},
	}, connect, log)
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()

	a, b := netip.MustParseAddr("10.1.1.5"), netip.MustParseAddr("10.1.1.6")
	testwait.Until(t, 10*time.Second, "identity of 10.1.1.5", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return w.Identity(a) == web.ID && labels[web.ID].Format() == web.Labels.Format() && changed[a] == 1 && ports[web.ID] == 1, ""
	})
	if n := attempts.Load(); n != 3 {
		t.Errorf("%d connection attempts, want 3 (two failed, one kept)", n)
	}
	if id := w.Identity(b); id != 0 {
		t.Errorf("identity of an entry outside the cluster's range: %d, want 0 (refused)", id)
	}

	for _, step := range []struct {
		name string
		do   func()
		want uint32
	}{
		{"relabelled pod", func() { pod("10.1.1.5", 1<<16|301) }, 1<<16 | 301},
		{"deleted pod", func() {
			if _, err := admin.Etcd().Delete(ctx, wire.IPKey(a)); err != nil {
				t.Fatal(err)
			}
		}, 0},
	} {
		t.Run(step.name, func(t *testing.T) {
			mu.Lock()
			before := changed[a]
			mu.Unlock()
			step.do()
			testwait.Until(t, 10*time.Second, step.name, func() (bool, string) {
				mu.Lock()
				defer mu.Unlock()
				return w.Identity(a) == step.want && changed[a] == before+1 && ports[1<<16|301] == int(min(step.want, 1)) && ports[web.ID] == 0, fmt.Sprint(ports)
			})
		})
	}
}

func mustLabels(t *testing.T, s string) wire.Labels {
	t.Helper()
	ls, err := wire.ParseLabels(s)
	if err != nil {
		t.Fatal(err)
	}
	return ls
}
