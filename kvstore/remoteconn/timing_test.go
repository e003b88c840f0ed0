package remoteconn

import (
	"errors"
	"testing"
	"time"
)

func TestTimingWithDefaults(t *testing.T) {
	d := DefaultTiming()
	for _, tc := range []struct {
		name string
		in   Timing
		want Timing
	}{
		{name: "zero takes the defaults", in: Timing{}, want: d},
		{name: "set fields stay", in: Timing{BackoffMin: time.Second, BackoffMax: 2 * time.Second, DeniedBackoffMax: time.Second, ProbeInterval: time.Second, ProbeTimeout: time.Second, RescanInterval: time.Second},
			want: Timing{BackoffMin: time.Second, BackoffMax: 2 * time.Second, DeniedBackoffMax: time.Second, ProbeInterval: time.Second, ProbeTimeout: time.Second, RescanInterval: time.Second}},
		{name: "max below min", in: Timing{BackoffMin: 2 * time.Minute, BackoffMax: time.Second},
			want: Timing{BackoffMin: 2 * time.Minute, BackoffMax: 2 * time.Minute, DeniedBackoffMax: d.DeniedBackoffMax, ProbeInterval: d.ProbeInterval, ProbeTimeout: d.ProbeTimeout, RescanInterval: d.RescanInterval}},
		{name: "denied bounded by max", in: Timing{BackoffMin: time.Millisecond, BackoffMax: 2 * time.Millisecond},
			want: Timing{BackoffMin: time.Millisecond, BackoffMax: 2 * time.Millisecond, DeniedBackoffMax: 2 * time.Millisecond, ProbeInterval: d.ProbeInterval, ProbeTimeout: d.ProbeTimeout, RescanInterval: d.RescanInterval}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.in.WithDefaults(); got != tc.want {
				t.Fatalf("%+v.WithDefaults() = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestHealthProbed(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var h Health
	steps := []struct {
		name string
		up   bool
		err  error
		want Health
	}{
		{name: "first up", up: true, want: Health{Connected: true, Reconnects: 1, LastChange: t0.Add(0)}},
		{name: "still up", up: true, want: Health{Connected: true, Reconnects: 1, LastChange: t0.Add(0)}},
		{name: "down", err: errors.New("refused"), want: Health{Failures: 1, Reconnects: 1, LastError: "refused", LastChange: t0.Add(2)}},
		{name: "still down, other error", err: errors.New("timeout"), want: Health{Failures: 1, Reconnects: 1, LastError: "timeout", LastChange: t0.Add(2)}},
		{name: "back up", up: true, want: Health{Connected: true, Failures: 1, Reconnects: 2, LastChange: t0.Add(4)}},
	}
	for i, s := range steps {
		h.Probed(s.up, s.err, t0.Add(time.Duration(i)))
		if h != s.want {
			t.Fatalf("%s: %+v, want %+v", s.name, h, s.want)
		}
	}
}
