package policysync_test

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"math/bits"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/agent/internal/policy"
	"github.com/clustermesh/clustermesh/agent/internal/policysync"
	"github.com/clustermesh/clustermesh/agent/internal/policywatch"
	"github.com/clustermesh/clustermesh/bpf"
)

// TestCapacityOnEBPF runs the syncer on a real cm_policy of 16 keys (root):
// the kernel refuses a 17th key, the syncer never lets it come to that
// (no datapath failure), a local identity whose policy does not fit has no
// key in the map and is in default deny in cm_pol_mode, and it is
// programmed once another's policy is gone.
func TestCapacityOnEBPF(t *testing.T) {
	dp := bpf.OpenForTest(t, bpf.Config{CTEntries: 1024, PolicyEntries: 16})
	pw, err := bpf.NewPolicyWriter(dp, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if pw.Capacity() != 16 {
		t.Fatalf("capacity %d, want 16", pw.Capacity())
	}
	cm, err := ebpf.LoadPinnedMap(filepath.Join(dp.MapDir(), "cm_policy"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cm.Close()
	modes, err := ebpf.LoadPinnedMap(filepath.Join(dp.MapDir(), "cm_pol_mode"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer modes.Close()

	e := policy.New(policy.Config{ClusterName: "c1"})
	s := policysync.New(policysync.Config{Capacity: pw.Capacity(), Resolved: e}, pw, nil)
	w := policywatch.New(policywatch.Config{}, nil, e, s, slog.New(slog.DiscardHandler))
	const a0, a1 = 1<<16 | 1000, 1<<16 | 1001
	w.UpsertIdentity(a0, labels(t, "app", "a0", "io.kubernetes.pod.namespace", "shop", "io.cilium.k8s.policy.cluster", "c1"))
	w.UpsertIdentity(a1, labels(t, "app", "a1", "io.kubernetes.pod.namespace", "shop", "io.cilium.k8s.policy.cluster", "c1"))
	// 10 clients of team t0 and t1 each: each policy needs 10 keys.
	for j := range 20 {
		w.UpsertIdentity(uint32(2<<16|2000+j), labels(t, "app", "client", "team", fmt.Sprint("t", j%2),
			"io.kubernetes.pod.namespace", "shop", "io.cilium.k8s.policy.cluster", "c2"))
	}
	apply := func(d policy.Diff) {
		t.Helper()
		if err := s.Apply(d); err != nil {
			t.Fatalf("apply: %v", err)
		}
	}
	count := func() int {
		var k [20]byte
		var v [8]byte
		n := 0
		it := cm.Iterate()
		for it.Next(&k, &v) {
			n++
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		return n
	}
	subjects := func() map[uint32]int {
		out := map[uint32]int{}
		var k [20]byte
		var v [8]byte
		it := cm.Iterate()
		for it.Next(&k, &v) {
			out[bits.ReverseBytes32(binary.LittleEndian.Uint32(k[8:]))]++
		}
		return out
	}
	ingressDeny := func(id uint32) bool {
		var v [4]byte
		return modes.Lookup(id, &v) == nil && v[0] == 1
	}

	apply(e.UpsertPolicy(teamPolicy(0, 8000)))
	apply(e.UpsertPolicy(teamPolicy(1, 8001)))
	if got := subjects(); got[a0] != 10 || got[a1] != 0 {
		t.Errorf("keys per subject %v, want 10 of a0 and none of a1", got)
	}
	if !ingressDeny(a1) || !ingressDeny(a0) {
		t.Errorf("a0 or a1 not in default deny")
	}
	if u := s.MapUse(); u.Used != 10 || len(u.Refused) != 1 || u.Refused[0] != (policysync.RefusedSubject{Subject: a1, Keys: 10}) {
		t.Errorf("map use %+v", u)
	}
	if w.Failures() != 0 {
		t.Errorf("%d datapath failures", w.Failures())
	}
	// The kernel's limit is the configured one.
	for n := count(); n < 16; n++ {
		if err := cm.Update(fillerKey(uint32(n)), make([]byte, 8), ebpf.UpdateNoExist); err != nil {
			t.Fatalf("key %d of 16: %v", n+1, err)
		}
	}
	if err := cm.Update(fillerKey(99), make([]byte, 8), ebpf.UpdateNoExist); err == nil {
		t.Errorf("a 17th key was accepted by a map of 16")
	}
	for n := 10; n < 16; n++ {
		if err := cm.Delete(fillerKey(uint32(n))); err != nil {
			t.Fatal(err)
		}
	}

	apply(e.DeletePolicy("cnp/shop/p0"))
	if got := subjects(); got[a0] != 0 || got[a1] != 10 {
		t.Errorf("keys per subject %v after p0 is gone, want 10 of a1", got)
	}
	if u := s.MapUse(); u.Used != 10 || len(u.Refused) != 0 || u.Refusals != 1 {
		t.Errorf("map use %+v", u)
	}
}

// fillerKey is a policy key of subject 7 for peer n (struct policy_key).
func fillerKey(n uint32) []byte {
	k := make([]byte, 20)
	binary.LittleEndian.PutUint32(k[0:], 128)
	binary.LittleEndian.PutUint32(k[8:], bits.ReverseBytes32(7))
	binary.LittleEndian.PutUint32(k[12:], bits.ReverseBytes32(n))
	k[17] = 6
	return k
}
