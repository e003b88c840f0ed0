package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// NS is a named network namespace (as created by `ip netns add`).
type NS struct {
	Name string
}

// NewNS creates the namespace cmt-<name> and deletes it at cleanup, killing
// whatever still runs in it.
func NewNS(t testing.TB, name string) *NS {
	t.Helper()
	n := &NS{Name: "cmt-" + name}
	if out, err := exec.Command("ip", "netns", "add", n.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", n.Name, err, out)
	}
	t.Cleanup(func() { n.remove() })
	return n
}

func (n *NS) remove() {
	if out, err := exec.Command("ip", "netns", "pids", n.Name).Output(); err == nil {
		for _, pid := range strings.Fields(string(out)) {
			_ = exec.Command("kill", "-9", pid).Run()
		}
	}
	_ = exec.Command("ip", "netns", "delete", n.Name).Run()
}

// RandomID returns a short random id for names unique to one test run.
func RandomID() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Path is the namespace's bind mount.
func (n *NS) Path() string { return "/run/netns/" + n.Name }

// IP runs `ip -n <ns> args...`.
func (n *NS) IP(args ...string) ([]byte, error) {
	out, err := exec.Command("ip", append([]string{"-n", n.Name}, args...)...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ip -n %s %s: %w: %s", n.Name, strings.Join(args, " "), err, out)
	}
	return out, nil
}

// Exec runs a command inside the namespace (ip netns exec).
func (n *NS) Exec(name string, args ...string) ([]byte, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), n.Name, err, out)
	}
	return out, nil
}

// Do runs f on an OS thread switched into the namespace. Sockets created by
// f belong to the namespace and may be used from any goroutine afterwards.
// Threads that f's goroutine starts do not inherit the namespace.
func (n *NS) Do(f func() error) error {
	target, err := os.Open(n.Path())
	if err != nil {
		return fmt.Errorf("open netns: %w", err)
	}
	defer target.Close()
	runtime.LockOSThread()
	self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own netns: %w", err)
	}
	defer self.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", n.Name, err)
	}
	ferr := f()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: it dies with the goroutine instead of
		// running other goroutines in the wrong namespace.
		return fmt.Errorf("setns back: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}
