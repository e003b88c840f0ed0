package procmem

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

// gonePID returns the pid of a finished, reaped child: nothing to read.
func gonePID(t *testing.T) int {
	child := exec.Command("true")
	if err := child.Run(); err != nil {
		t.Fatal(err)
	}
	return child.Process.Pid
}

func TestCPU(t *testing.T) {
	gone := gonePID(t)
	tests := []struct {
		name string
		pid  int
		want func(time.Duration) bool
	}{
		{"this process, after spinning 50 ms", 0, func(d time.Duration) bool { return d >= 10*time.Millisecond }},
		{"this process by pid", os.Getpid(), func(d time.Duration) bool { return d >= 10*time.Millisecond }},
		{"a pid that is gone", gone, func(d time.Duration) bool { return d == 0 }},
	}
	// Spin until the rusage of the process says at least 50 ms of CPU, so
	// that the clock-tick counters of /proc have moved.
	deadline := time.Now().Add(10 * time.Second)
	for CPU(0) < 50*time.Millisecond && time.Now().Before(deadline) {
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := CPU(tc.pid); !tc.want(got) {
				t.Errorf("CPU(%d) = %v", tc.pid, got)
			}
		})
	}
}

func TestRSSOf(t *testing.T) {
	gone := gonePID(t)
	tests := []struct {
		name string
		pid  int
		want func(uint64) bool
	}{
		{"this process", 0, func(n uint64) bool { return n > 1<<20 }},
		{"this process by pid", os.Getpid(), func(n uint64) bool { return n > 1<<20 }},
		{"a pid that is gone", gone, func(n uint64) bool { return n == 0 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := RSSOf(tc.pid); !tc.want(got) {
				t.Errorf("RSSOf(%d) = %d", tc.pid, got)
			}
		})
	}
}
