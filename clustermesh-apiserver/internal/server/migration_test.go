package server

import (
	"context"
	"encoding/json"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// TestIdentityLabelMigration starts the apiserver on an etcd written by a
// version whose identities lacked the service account and namespace
// labels (Cilium's label set has them). The pod gets a new identity; its
// ipcache entry must switch from the old to the new one in a single put,
// never deleted, with both identities in etcd at the revision of the
// switch; the old identity stays until its grace period ends.
func TestIdentityLabelMigration(t *testing.T) {
	h := newHarness(t, "migration", "")
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	h.clock, h.grace = clk, 10*time.Minute
	ns, err := h.cs.CoreV1().Namespaces().Get(h.ctx, h.ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Labels["team"] = "blue"
	if _, err := h.cs.CoreV1().Namespaces().Update(h.ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.node("mig-n1", "192.168.8.1", "10.8.1.0/24")
	h.pod("web-1", "mig-n1", "192.168.8.1", map[string]string{"app": "web"}, "10.8.1.10")

	// What the previous version wrote: identity 7<<16|256 for the old label
	// set, and the pod's ipcache entry with it.
	oldID := h.id<<16 | 256
	oldLabels := "k8s:app=web;k8s:io.cilium.k8s.policy.cluster=" + h.cluster + ";k8s:io.kubernetes.pod.namespace=" + h.ns + ";"
	ipKey := wire.IPKey(netip.MustParseAddr("10.8.1.10"))
	e := h.kv.Etcd()
	if _, err := e.Put(h.ctx, wire.IdentityKey(oldID), oldLabels); err != nil {
		t.Fatal(err)
	}
	oldEntry := `{"IP":"10.8.1.10","Mask":null,"HostIP":"192.168.8.1","ID":` + strconv.FormatUint(uint64(oldID), 10) + `,"Key":0,"Metadata":"","K8sNamespace":"` + h.ns + `","K8sPodName":"web-1"}`
	put, err := e.Put(h.ctx, ipKey, oldEntry)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(h.ctx)
	defer cancel()
	events := e.Watch(wctx, ipKey, clientv3.WithRev(put.Header.Revision+1))

	h.start()
	var newID uint32
	var switchRev int64
	deadline := time.After(time.Minute)
	for newID == 0 {
		select {
		case wr := <-events:
			if err := wr.Err(); err != nil {
				t.Fatal(err)
			}
			for _, ev := range wr.Events {
				if ev.Type != clientv3.EventTypePut {
					t.Fatalf("ipcache entry deleted at revision %d: a traffic gap", ev.Kv.ModRevision)
				}
				var p wire.IPIdentityPair
				if err := json.Unmarshal(ev.Kv.Value, &p); err != nil {
					t.Fatal(err)
				}
				switch {
				case p.ID == oldID:
				case p.ID < oldID || p.ID > h.id<<16|0xffff:
					t.Fatalf("ipcache entry switched to identity %d, outside the cluster's range", p.ID)
				default:
					newID, switchRev = p.ID, ev.Kv.ModRevision
				}
			}
		case <-deadline:
			t.Fatal("the ipcache entry never switched to the new identity")
		}
	}

	// Both identities exist at the revision of the switch.
	for _, id := range []uint32{oldID, newID} {
		resp, err := e.Get(h.ctx, wire.IdentityKey(id), clientv3.WithRev(switchRev))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("identity %d at the switch (revision %d): %v, %v", id, switchRev, resp, err)
		}
	}
	resp, err := e.Get(h.ctx, wire.IdentityKey(newID))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("new identity %d: %v, %v", newID, resp, err)
	}
	for _, l := range []string{"k8s:io.cilium.k8s.policy.serviceaccount=default;", "k8s:io.cilium.k8s.namespace.labels.team=blue;", "k8s:app=web;"} {
		if !strings.Contains(string(resp.Kvs[0].Value), l) {
			t.Errorf("new identity labels %q lack %q", resp.Kvs[0].Value, l)
		}
	}

	// A namespace label is part of the identity: changing it moves the pod.
	ns, err = h.cs.CoreV1().Namespaces().Get(h.ctx, h.ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Labels["team"] = "red"
	if _, err := h.cs.CoreV1().Namespaces().Update(h.ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a new identity after the namespace label changed", func() bool {
		r, err := e.Get(h.ctx, ipKey)
		if err != nil || len(r.Kvs) != 1 {
			return false
		}
		var p wire.IPIdentityPair
		if json.Unmarshal(r.Kvs[0].Value, &p) != nil || p.ID == newID || p.ID == oldID {
			return false
		}
		l, err := e.Get(h.ctx, wire.IdentityKey(p.ID))
		return err == nil && len(l.Kvs) == 1 && strings.Contains(string(l.Kvs[0].Value), "k8s:io.cilium.k8s.namespace.labels.team=red;")
	})

	// The old identity is kept through its grace period, then released.
	present := func() bool {
		r, err := e.Get(h.ctx, wire.IdentityKey(oldID))
		if err != nil {
			t.Fatal(err)
		}
		return len(r.Kvs) == 1
	}
	clk.Step(5 * time.Minute)
	if !present() {
		t.Fatal("old identity released within its grace period")
	}
	eventually(t, "old identity released after its grace period", func() bool {
		clk.Step(time.Minute)
		return !present()
	})
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: timed out", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
