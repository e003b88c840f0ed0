package peer

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// childEnv makes the test binary run as the benchmark's etcd: a process of
// its own, so that neither the agent's nor Cilium's figures include it.
const childEnv = "CLUSTERMESH_BENCH_ETCD_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childEnv); dir != "" {
		if err := runEtcd(dir); err != nil {
			fmt.Fprintln(os.Stderr, "etcd:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runEtcd serves a plain-HTTP single-member etcd on dir (Cilium's tool
// dials without TLS) until stdin closes; it prints its client URL.
func runEtcd(dir string) error {
	free := func() (url.URL, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return url.URL{}, err
		}
		defer ln.Close()
		return url.URL{Scheme: "http", Host: ln.Addr().String()}, nil
	}
	cu, err := free()
	if err != nil {
		return err
	}
	pu, err := free()
	if err != nil {
		return err
	}
	ec := embed.NewConfig()
	ec.Dir = dir
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	ec.InitialCluster = ec.Name + "=" + pu.String()
	ec.UnsafeNoFsync = true
	ec.QuotaBackendBytes = 8 << 30
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop()) // its shutdown logs errors by design
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return err
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(time.Minute):
		return fmt.Errorf("not ready after a minute")
	}
	fmt.Println(cu.String())
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// startEtcd runs an etcd child process on a fresh directory under
// /dev/shm and returns its client URL and process ID; it stops when the
// benchmark ends.
func startEtcd(tb testing.TB, name string) (string, int) {
	tb.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "cm-bench-"+name+"-")
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+filepath.Join(dir, "data"))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
		os.RemoveAll(dir)
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		tb.Fatalf("etcd child: %v", err)
	}
	return strings.TrimSpace(line), cmd.Process.Pid
}
