package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// StrictEnv is the variable `make test` sets so that a missing requirement
// fails a test as it does under CI (`make test-unit` leaves it unset).
const StrictEnv = "CLUSTERMESH_TEST_STRICT"

// InCI reports whether nothing may skip: under CI (CI=true) or with
// StrictEnv=true (make test).
func InCI() bool { return os.Getenv("CI") == "true" || os.Getenv(StrictEnv) == "true" }

// Unavailable skips t with reason, or fails it under CI or make test.
func Unavailable(t testing.TB, reason string) {
	t.Helper()
	if InCI() {
		t.Fatalf("required by CI and make test but unavailable: %s (hack/setup.sh installs the Debian packages)", reason)
	}
	t.Skip("skipped: " + reason)
}

// RequireRoot skips (or fails in CI) unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root (CAP_BPF, CAP_NET_ADMIN)")
	}
}

// RequireCommand skips (or fails in CI) unless name is on PATH.
func RequireCommand(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Unavailable(t, name+" is not installed")
	}
	return p
}

// KubeBinDir returns the directory holding kube-apiserver and
// kube-controller-manager (built by hack/kube-bins.sh, exported by make test
// as KUBE_BIN_DIR), skipping (or failing in CI) when they are missing.
func KubeBinDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("KUBE_BIN_DIR")
	if dir == "" {
		Unavailable(t, "KUBE_BIN_DIR is not set; run hack/kube-bins.sh or make test")
	}
	for _, b := range []string{"kube-apiserver", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			Unavailable(t, "missing "+b+" in KUBE_BIN_DIR="+dir)
		}
	}
	return dir
}
