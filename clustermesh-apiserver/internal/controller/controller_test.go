package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type recorder struct {
	mu       sync.Mutex
	seen     map[string]int
	failOnce map[string]bool // fail the first attempt of these keys
	terminal map[string]bool
}

func (r *recorder) Reconcile(_ context.Context, key string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen[key]++
	if r.terminal[key] {
		return fmt.Errorf("bad %s: %w", key, ErrTerminal)
	}
	if r.failOnce[key] && r.seen[key] == 1 {
		return errors.New("transient")
	}
	return nil
}

func (r *recorder) count(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[key]
}

// The synced callback fires only once every object of the initial listing
// was reconciled, retries and terminal errors included.
func TestSyncedAfterInitialListing(t *testing.T) {
	var objs []any
	for i := range 20 {
		objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("n%02d", i)}})
	}
	cs := fake.NewClientset()
	for _, o := range objs {
		if _, err := cs.CoreV1().Nodes().Create(context.Background(), o.(*corev1.Node), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	f := informers.NewSharedInformerFactory(cs, 0)
	inf := f.Core().V1().Nodes().Informer()
	rec := &recorder{seen: map[string]int{}, failOnce: map[string]bool{"n03": true, "n07": true}, terminal: map[string]bool{"n05": true}}
	var fired []int
	var mu sync.Mutex
	c := New(Config{Name: "nodes", Workers: 3, RetryBase: time.Millisecond}, rec, nil, inf.GetIndexer().ListKeys, func() {
		mu.Lock()
		defer mu.Unlock()
		fired = append(fired, rec.count("n03"), rec.count("n07"))
	}, slog.New(slog.DiscardHandler), NewMetrics(nil))
	c.synced = append(c.synced, inf.HasSynced)
	if _, err := inf.AddEventHandler(c.Handler()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	f.Start(ctx.Done())
	select {
	case <-c.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("never synced")
	}
	mu.Lock()
	if len(fired) != 2 || fired[0] < 2 || fired[1] < 2 {
		t.Errorf("synced fired with retried keys at attempts %v, want both retried first", fired)
	}
	mu.Unlock()
	// Later events still reach the reconciler.
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "late"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for rec.count("late") == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if rec.count("late") == 0 {
		t.Error("event after sync not reconciled")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	f.Shutdown()
}
