package backoff

import (
	"math/rand/v2"
	"time"

	"k8s.io/utils/clock"
)

// Policy is the shape of a backoff. The zero value is not usable; set Min
// and Max.
type Policy struct {
	// Min is the delay after the first failure, Max the cap.
	Min, Max time.Duration
	// Healthy is how long a part must have worked (since Success) before
	// its next failure counts as a first failure again; 0 means Max.
	Healthy time.Duration
}

// Delay returns the delay after the n-th consecutive failure (n from 0):
// Min doubled n times, capped at Max, jittered uniformly into [d/2, d].
func (p Policy) Delay(n int) time.Duration {
	d := p.Min << min(n, 30)
	if d <= 0 || d > p.Max {
		d = p.Max
	}
	return d/2 + rand.N(d/2+1)
}

func (p Policy) healthy() time.Duration {
	if p.Healthy > 0 {
		return p.Healthy
	}
	return p.Max
}

// Backoff counts the consecutive failures of one part. It is not safe for
// concurrent use; each retry loop owns its own.
type Backoff struct {
	p       Policy
	clk     clock.PassiveClock
	n       int       // failures since the count last restarted
	okSince time.Time // when the part last started working; zero: failing
}

// New returns a Backoff with policy p, timed by clk.
func New(p Policy, clk clock.PassiveClock) *Backoff {
	return &Backoff{p: p, clk: clk}
}

// Success records that the part works from now on (a list completed, a
// session connected). It does not restart the count by itself: that takes
// Healthy of uninterrupted work before the next Failure.
func (b *Backoff) Success() {
	if b.okSince.IsZero() {
		b.okSince = b.clk.Now()
	}
}

// Failure records a failure and returns how long to wait before the next
// attempt.
func (b *Backoff) Failure() time.Duration {
	if !b.okSince.IsZero() && b.clk.Since(b.okSince) >= b.p.healthy() {
		b.n = 0
	}
	b.okSince = time.Time{}
	d := b.p.Delay(b.n)
	b.n++
	return d
}

// Failures returns the consecutive failures counted so far.
func (b *Backoff) Failures() int { return b.n }
