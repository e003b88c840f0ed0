package netns

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// NS is a named network namespace (as made by `ip netns add`), or one known
// by a path (FromPath), such as a pod's under /proc/<pid>/ns/net.
type NS struct {
	Name string
	path string // set by FromPath; IP and Batch need a named namespace
}

// FromPath is the namespace bound at path, called name in messages. Exec and
// Do work on it; IP and Batch (`ip -n`) only on named namespaces.
func FromPath(name, path string) *NS { return &NS{Name: name, path: path} }

// Add creates the namespace name.
func Add(name string) (*NS, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", name, err, out)
	}
	return &NS{Name: name}, nil
}

// Remove kills whatever still runs in the namespace and deletes it.
func (n *NS) Remove() {
	if out, err := exec.Command("ip", "netns", "pids", n.Name).Output(); err == nil {
		for _, pid := range strings.Fields(string(out)) {
			_ = exec.Command("kill", "-9", pid).Run()
		}
	}
	_ = exec.Command("ip", "netns", "delete", n.Name).Run()
}

// Path is the namespace's bind mount.
func (n *NS) Path() string {
	if n.path != "" {
		return n.path
	}
	return "/run/netns/" + n.Name
}

// IP runs `ip -n <ns> args...`.
func (n *NS) IP(args ...string) ([]byte, error) {
	out, err := exec.Command("ip", append([]string{"-n", n.Name}, args...)...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ip -n %s %s: %w: %s", n.Name, strings.Join(args, " "), err, out)
	}
	return out, nil
}

// Batch runs ip commands in the namespace in one process (ip -batch).
func (n *NS) Batch(cmds ...string) error {
	cmd := exec.Command("ip", "-n", n.Name, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s -batch: %w: %s\n%s", n.Name, err, out, strings.Join(cmds, "\n"))
	}
	return nil
}

// Exec runs a command inside the namespace and returns its combined output.
func (n *NS) Exec(name string, args ...string) ([]byte, error) {
	out, err := exec.Command("nsenter", append([]string{"--net=" + n.Path(), "--", name}, args...)...).CombinedOutput()
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

// LinkMAC returns the MAC address of dev in the namespace.
func (n *NS) LinkMAC(dev string) (string, error) {
	out, err := n.IP("-o", "link", "show", "dev", dev)
	if err != nil {
		return "", err
	}
	f := strings.Fields(string(out))
	for i, w := range f {
		if w == "link/ether" && i+1 < len(f) {
			return f[i+1], nil
		}
	}
	return "", fmt.Errorf("no MAC for %s in %s: %s", dev, n.Name, out)
}

// AddBridge is the `ip` command (for Batch) that adds bridge name with a
// fixed MAC address. A bridge added without one takes the lowest MAC of its
// ports, so its MAC changes as ports join; a neighbour that resolved the
// bridge's address before then sends to the old MAC, into the void, until
// its neighbour entry goes stale (≈ 30–60 s).
func AddBridge(name string) string {
	return "link add " + name + " address 02:00:00:00:00:01 type bridge"
}
