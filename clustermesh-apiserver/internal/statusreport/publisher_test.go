package statusreport

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/clustermesh/clustermesh/internal/meshstatus"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestPublishOnChangeAndInterval checks that a change is published on the
// next poll and that a deleted ConfigMap comes back only after Interval.
func TestPublishOnChangeAndInterval(t *testing.T) {
	const ns = "status"
	cs := fake.NewClientset()
	clk := clocktesting.NewFakeClock(time.Unix(1_000_000, 0))
	var (
		mu sync.Mutex
		r  = meshstatus.APIServerReport{Cluster: "c1", ClusterID: 1}
	)
	p, err := New(Config{Namespace: ns, Interval: 10 * time.Second, Poll: time.Second}, cs.CoreV1(),
		func(context.Context) meshstatus.APIServerReport {
			mu.Lock()
			defer mu.Unlock()
			return r
		}, clk, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	get := func() (meshstatus.APIServerReport, bool) {
		rs, err := meshstatus.List(ctx, cs.CoreV1(), ns)
		if err != nil || len(rs.APIServers) != 1 {
			return meshstatus.APIServerReport{}, false
		}
		return rs.APIServers[0], true
	}
	// waitFor steps the fake clock by one poll until cond holds.
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
			if clk.HasWaiters() {
				clk.Step(time.Second)
			}
		}
	}
	waitFor("the first report", func() bool { got, ok := get(); return ok && !got.Ready })

	mu.Lock()
	r.Ready = true
	mu.Unlock()
	waitFor("the changed report", func() bool { got, ok := get(); return ok && got.Ready })

	if err := cs.CoreV1().ConfigMaps(ns).Delete(ctx, meshstatus.ObjectName(&meshstatus.APIServerReport{}), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	start := clk.Now()
	waitFor("the report back after the interval", func() bool { _, ok := get(); return ok })
	if d := clk.Since(start); d < 5*time.Second {
		t.Errorf("republished after %s, before the interval", d)
	}
	_, err = cs.CoreV1().ConfigMaps(ns).Get(ctx, meshstatus.ObjectName(&meshstatus.APIServerReport{}), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		t.Fatal("no ConfigMap")
	}
}

func TestNewNeedsNamespace(t *testing.T) {
	if _, err := New(Config{}, fake.NewClientset().CoreV1(), nil, clocktesting.NewFakeClock(time.Now()), slog.New(slog.DiscardHandler)); err != ErrNoNamespace {
		t.Fatalf("New without namespace: %v", err)
	}
}
