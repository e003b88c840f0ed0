package backoff

import (
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

func TestDelayBounds(t *testing.T) {
	p := Policy{Min: 100 * time.Millisecond, Max: time.Second}
	for _, tc := range []struct {
		name   string
		n      int
		lo, hi time.Duration
	}{
		{"first", 0, 50 * time.Millisecond, 100 * time.Millisecond},
		{"third", 2, 200 * time.Millisecond, 400 * time.Millisecond},
		{"capped", 10, 500 * time.Millisecond, time.Second},
		{"huge n does not overflow", 1000, 500 * time.Millisecond, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 100 {
				if d := p.Delay(tc.n); d < tc.lo || d > tc.hi {
					t.Fatalf("Delay(%d) = %v, want in [%v, %v]", tc.n, d, tc.lo, tc.hi)
				}
			}
		})
	}
}

// TestRestartsOnlyAfterHealth: a success followed at once by a failure
// (a watch that breaks right after each list) keeps counting; a success
// that lasted Healthy restarts the count.
func TestRestartsOnlyAfterHealth(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Unix(0, 0))
	b := New(Policy{Min: time.Millisecond, Max: time.Second, Healthy: 10 * time.Second}, clk)
	for i := range 5 {
		b.Success()
		clk.SetTime(clk.Now().Add(time.Second))
		b.Failure()
		if b.Failures() != i+1 {
			t.Fatalf("after %d quick failures the count is %d", i+1, b.Failures())
		}
	}
	b.Success()
	clk.SetTime(clk.Now().Add(10 * time.Second))
	if d := b.Failure(); b.Failures() != 1 || d > time.Millisecond {
		t.Fatalf("after a healthy period: count %d, delay %v", b.Failures(), d)
	}
	b.Failure()
	if b.Failures() != 2 {
		t.Fatalf("failures without success: count %d", b.Failures())
	}
}
