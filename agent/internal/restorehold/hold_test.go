package restorehold

import (
	"encoding/json"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// fakeDatapath holds cluster IDs and records releases.
type fakeDatapath struct {
	holding  map[uint32]bool
	released []uint32
}

func (f *fakeDatapath) Holding() []uint32 { return slices.Sorted(maps.Keys(f.holding)) }
func (f *fakeDatapath) Release(id uint32) {
	if f.holding[id] {
		delete(f.holding, id)
		f.released = append(f.released, id)
	}
}

const ownID = 1

// TestHold: which restored cluster IDs each event releases, and what the
// state file holds afterwards. The previous run's file says c2 held 2, c3
// held 3 and c9 held 9; the datapath holds 1, 2, 3, 9 and 7 (a cluster
// the file does not know).
func TestHold(t *testing.T) {
	type step struct {
		name string
		do   func(h *Hold, ids map[string]uint32)
		// released are the IDs this step releases, in order.
		released []uint32
	}
	configured := func(names ...string) func(string) bool {
		return func(n string) bool { return slices.Contains(names, n) }
	}
	for _, tc := range []struct {
		name string
		// alsoHeld are restored IDs besides 1, 2, 3, 7 and 9.
		alsoHeld []uint32
		steps    []step
		// file is the state file after the last step.
		file map[string]uint32
	}{
		{
			name: "start releases the unconfigured, sync releases the remote's",
			steps: []step{
				{"started with c2 and c3", func(h *Hold, _ map[string]uint32) { h.Started(configured("c2", "c3")) }, []uint32{7, 9}},
				{"c2 reserves 2", func(h *Hold, ids map[string]uint32) { ids["c2"] = 2; h.Reserved("c2", 2) }, nil},
				{"c2 synced", func(h *Hold, _ map[string]uint32) { h.Synced(2) }, []uint32{2}},
				{"own synced", func(h *Hold, _ map[string]uint32) { h.OwnSynced() }, []uint32{ownID}},
			},
			file: map[string]uint32{"c2": 2, "c3": 3},
		},
		{
			name: "a remote back with another ID releases its old one",
			steps: []step{
				{"started with c2 and c3", func(h *Hold, _ map[string]uint32) { h.Started(configured("c2", "c3")) }, []uint32{7, 9}},
				{"c3 reserves 4", func(h *Hold, ids map[string]uint32) { ids["c3"] = 4; h.Reserved("c3", 4) }, []uint32{3}},
			},
			file: map[string]uint32{"c2": 2, "c3": 4},
		},
		{
			name: "a removed remote releases its ID and its old one",
			steps: []step{
				{"started with c2 and c3", func(h *Hold, _ map[string]uint32) { h.Started(configured("c2", "c3")) }, []uint32{7, 9}},
				{"c2 removed before it connected", func(h *Hold, _ map[string]uint32) { h.Removed("c2", 0) }, []uint32{2}},
				{"c3 reserves 3", func(h *Hold, ids map[string]uint32) { ids["c3"] = 3; h.Reserved("c3", 3) }, nil},
				{"c3 removed", func(h *Hold, ids map[string]uint32) { delete(ids, "c3"); h.Removed("c3", 3) }, []uint32{3}},
			},
			file: map[string]uint32{},
		},
		{
			name:     "the policies' CIDR entries are held until the policies are synced",
			alsoHeld: []uint32{0},
			steps: []step{
				{"started with c2 and c3", func(h *Hold, _ map[string]uint32) { h.Started(configured("c2", "c3")) }, []uint32{7, 9}},
				{"own synced", func(h *Hold, _ map[string]uint32) { h.OwnSynced() }, []uint32{ownID}},
				{"policies synced", func(h *Hold, _ map[string]uint32) { h.PoliciesSynced() }, []uint32{0}},
			},
			file: map[string]uint32{"c2": 2, "c3": 3},
		},
		{
			name:     "a remote that reserved before start keeps its ID held",
			alsoHeld: []uint32{5},
			steps: []step{
				{"c5 reserves 5 before start", func(h *Hold, ids map[string]uint32) { ids["c5"] = 5; h.Reserved("c5", 5) }, nil},
				{"started with c5 only", func(h *Hold, _ map[string]uint32) { h.Started(configured("c5")) }, []uint32{2, 3, 7, 9}},
			},
			file: map[string]uint32{"c5": 5},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			prev, _ := json.Marshal(map[string]uint32{"c2": 2, "c3": 3, "c9": 9})
			if err := os.WriteFile(filepath.Join(dir, "remote-clusters.json"), prev, 0o600); err != nil {
				t.Fatal(err)
			}
			dp := &fakeDatapath{holding: map[uint32]bool{ownID: true, 2: true, 3: true, 7: true, 9: true}}
			for _, id := range tc.alsoHeld {
				dp.holding[id] = true
			}
			ids := map[string]uint32{}
			h := New(Config{OwnID: ownID, StateDir: dir}, dp, func() map[string]uint32 { return maps.Clone(ids) }, slog.Default())
			h.Load()
			for _, s := range tc.steps {
				dp.released = nil
				s.do(h, ids)
				if !slices.Equal(slices.Sorted(slices.Values(dp.released)), s.released) {
					t.Fatalf("%s: released %v, want %v", s.name, dp.released, s.released)
				}
			}
			data, err := os.ReadFile(filepath.Join(dir, "remote-clusters.json"))
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]uint32
			if err := json.Unmarshal(data, &got); err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(got, tc.file) {
				t.Fatalf("state file %v, want %v", got, tc.file)
			}
		})
	}
}
