package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/agent/internal/dpsync"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
)

// TestWorldIngress: beside a primary CNI the world decision is turned on
// only with cluster ranges, and only by the flush that follows the own
// cluster's sync (which programs the ranges); a failure to turn it on is
// reported, not hidden; full mode always decides world.
func TestWorldIngress(t *testing.T) {
	errFlag := errors.New("map update refused")
	ranges := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	for _, tc := range []struct {
		name       string
		mode       string
		ranges     []netip.Prefix
		turnOnErr  error
		wantCalled bool
		families   [2]bool // of the call: IPv4, IPv6
		before     bool    // Enforced before the sync
		after      bool    // Enforced after it
		state      string
	}{
		{name: "coexist without ranges", mode: ModeCoexist, state: "--cluster-cidrs is not set"},
		{name: "coexist with ranges", mode: ModeCoexist, ranges: ranges, wantCalled: true, families: [2]bool{true, false}, after: true, state: "outside the cluster ranges (10.244.0.0/16 and the nodes' pod CIDRs); IPv6 not decided: no IPv6 range"},
		{name: "coexist with ranges of both families", mode: ModeCoexist, ranges: append(ranges, netip.MustParsePrefix("fd00:10:244::/56")), wantCalled: true, families: [2]bool{true, true}, after: true,
			state: "outside the cluster ranges (10.244.0.0/16, fd00:10:244::/56 and the nodes' pod CIDRs)"},
		{name: "coexist, the flag cannot be set", mode: ModeCoexist, ranges: ranges, turnOnErr: errFlag, wantCalled: true, families: [2]bool{true, false}, state: errFlag.Error()},
		{name: "full mode", mode: ModeFull, before: true, after: true, state: "full mode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dp := memory.New()
			rec := dpsync.New(dpsync.Config{ClusterID: 1, ClusterCIDRs: tc.ranges}, dp, slog.New(slog.NewTextHandler(io.Discard, nil)), clock.RealClock{})
			var called [][2]bool
			w := &worldIngress{mode: tc.mode, ranges: rec.ClusterCIDRs(), log: slog.New(slog.NewTextHandler(io.Discard, nil)),
				podCIDRs: func() []netip.Prefix { return []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")} },
				turnOn: func(v4, v6 bool) error {
					// The ranges are programmed by then.
					st, _ := dp.Dump()
					if _, ok := st.IPCache[ranges[0]]; !ok {
						t.Errorf("turned on before the ranges were programmed: %v", st.IPCache)
					}
					called = append(called, [2]bool{v4, v6})
					return tc.turnOnErr
				}}
			if got := w.Status(); got.Enforced != tc.before {
				t.Fatalf("before the sync: %+v, want enforced=%v", got, tc.before)
			}
			w.ownSynced(rec)
			if err := rec.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			if (len(called) == 1) != tc.wantCalled || len(called) > 1 || (tc.wantCalled && called[0] != tc.families) {
				t.Fatalf("turnOn calls %v, want one for %v: %v", called, tc.families, tc.wantCalled)
			}
			got := w.Status()
			if got.Enforced != tc.after || !strings.Contains(got.State, tc.state) {
				t.Fatalf("after the sync: %+v, want enforced=%v and a state with %q", got, tc.after, tc.state)
			}
			if got.NodePodCIDRs != 1 || w.Report() != got.State {
				t.Fatalf("status %+v, report %q", got, w.Report())
			}
		})
	}
}
