//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/clustermesh/clustermesh/e2e/harness"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

var (
	meshOnce sync.Once
	shared   *harness.Mesh
	meshErr  error
	workDir  string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "clustermesh-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	workDir = dir
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		select {
		case <-sig:
			teardown()
			os.Exit(2)
		case <-done:
		}
	})
	code := m.Run()
	close(done)
	wg.Wait()
	teardown()
	if code == 0 {
		// client-go's HTTP/2 transports keep idle-connection readers and
		// klog its flush daemon for the life of the process.
		if err := goleak.Find(
			goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"),
			goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
			goleak.IgnoreAnyFunction("golang.org/x/net/http2.(*ClientConn).readLoop"),
		); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines left after teardown:", err)
			code = 1
		}
	}
	os.Exit(code)
}

var teardownOnce sync.Once

func teardown() {
	teardownOnce.Do(func() {
		if shared != nil {
			shared.Close()
		}
		if e := installEnv.Load(); e != nil {
			e.Close()
		}
		if os.Getenv("E2E_KEEP_DIR") == "" {
			_ = os.RemoveAll(workDir)
		}
	})
}

// mesh returns the shared mesh, started by the first test that needs it; it
// skips (or fails under CI) without root or the Kubernetes binaries.
func mesh(t *testing.T) *harness.Mesh {
	t.Helper()
	testenv.RequireRoot(t)
	kubeBin := testenv.KubeBinDir(t)
	for _, c := range []string{"ip", "nsenter", "ping", "mount"} {
		testenv.RequireCommand(t, c)
	}
	meshOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		modDir, err := moduleRoot()
		if err != nil {
			meshErr = err
			return
		}
		bins, err := harness.Build(ctx, modDir, workDir)
		if err != nil {
			meshErr = err
			return
		}
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		shared, meshErr = harness.Start(ctx, harness.Config{
			KubeBinDir: kubeBin, Bins: bins, Dir: workDir, Log: log,
			// Two local backends per cluster: with the default share (0.5)
			// one returning pod would end a failover at once; with 1 the
			// failback test sees the mixed state before the full return.
			AgentArgs: []string{"--failback-share=1"},
			// E2E_JOIN=direct joins without the CLI (see harness.JoinDirect).
			Join: os.Getenv("E2E_JOIN"),
			// E2E_CONNECTION=direct: every agent connects to every remote
			// etcd instead of reading the kvstoremesh cache (the default).
			Connection: os.Getenv("E2E_CONNECTION"),
		})
		if meshErr == nil {
			meshErr = shared.WaitReady(ctx, 2*time.Minute)
		}
	})
	if meshErr != nil {
		t.Fatalf("start mesh (logs in %s): %v", workDir, meshErr)
	}
	return shared
}

// ownMesh checks what a test that starts its own mesh needs (root, the
// Kubernetes binaries, commands, skipping or failing as testenv says) and
// builds the binaries into workDir/name. It returns the Kubernetes binary
// directory, the binaries, that directory and a warn-level logger.
func ownMesh(ctx context.Context, t *testing.T, name string, commands ...string) (string, harness.Binaries, string, *slog.Logger) {
	t.Helper()
	testenv.RequireRoot(t)
	kubeBin := testenv.KubeBinDir(t)
	for _, c := range commands {
		testenv.RequireCommand(t, c)
	}
	dir := filepath.Join(workDir, name)
	modDir, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	bins, err := harness.Build(ctx, modDir, dir)
	if err != nil {
		t.Fatal(err)
	}
	return kubeBin, bins, dir, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// moduleRoot is where the binaries are built from: E2E_SRC_DIR if set (a
// clean export of a commit, when the working tree is being edited), else
// the module of the tests.
func moduleRoot() (string, error) {
	if d := os.Getenv("E2E_SRC_DIR"); d != "" {
		return d, nil
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// eventually retries f until it succeeds or timeout passes, and returns its
// last error.
func eventually(timeout time.Duration, f func() error) error { return harness.Eventually(timeout, f) }

// measureRuns returns how many runs the measurement test t makes, from the
// environment variable env; t is skipped when it is unset or not positive.
func measureRuns(t *testing.T, env string) int {
	t.Helper()
	runs, _ := strconv.Atoi(os.Getenv(env))
	if runs <= 0 {
		t.Skipf("set %s to measure", env)
	}
	return runs
}
