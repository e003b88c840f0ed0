package scale

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	agentv1 "github.com/clustermesh/clustermesh/api/agent/v1"
	"github.com/clustermesh/clustermesh/bench/internal/procmem"
	"github.com/clustermesh/clustermesh/bpf"
)

// agentBin returns the agent binary: CLUSTERMESH_AGENT_BIN, else one built
// now from this module into dir.
func agentBin(b *testing.B, dir string) string {
	if p := os.Getenv("CLUSTERMESH_AGENT_BIN"); p != "" {
		return p
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		b.Fatalf("go env GOMOD: %v", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	bin := filepath.Join(dir, "clustermesh-agent")
	cmd := exec.Command("go", "build", "-o", bin, "./agent")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build the agent: %v\n%s", err, out)
	}
	return bin
}

func freeAddr(b *testing.B) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// agentProc is a running agent binary.
type agentProc struct {
	cmd                    *exec.Cmd
	start                  time.Time
	dir, pinDir, socket    string
	metricsAddr, pprofAddr string
	logPath                string
	exited                 chan error
}

// agentOpts are the per-run settings of startAgent.
type agentOpts struct {
	bin, kubeconfig, remotesDir, cacheConfig string
	cpu                                      string // taskset CPU list ("" unpinned)
}

// startAgent starts the agent on the bpf datapath in kvstoremesh mode, with
// its own pin directory (no tunnel device: no host device is touched).
func startAgent(b *testing.B, o agentOpts) *agentProc {
	dir := b.TempDir()
	a := &agentProc{
		dir: dir, pinDir: "/run/clustermesh-test/bench-scale-" + strconv.FormatInt(time.Now().UnixNano(), 36),
		socket: filepath.Join(dir, "agent.sock"), metricsAddr: freeAddr(b), pprofAddr: freeAddr(b),
		logPath: filepath.Join(dir, "agent.log"), exited: make(chan error, 1),
	}
	args := []string{o.bin, "--node-name", "n1", "--cluster-name", "c1", "--cluster-id", "1",
		"--kubeconfig", o.kubeconfig, "--datapath", "bpf", "--state-dir", filepath.Join(dir, "state"),
		"--status-socket", a.socket, "--metrics-address", a.metricsAddr, "--pprof-address", a.pprofAddr,
		"--clustermesh-config", o.remotesDir, "--clustermesh-cache-config", o.cacheConfig,
		"--bpf-pin-dir", a.pinDir, "--bpf-ct-entries", "1024", "--tunnel-device", ""}
	if o.cpu != "" {
		args = append([]string{"taskset", "-c", o.cpu}, args...)
	}
	logf, err := os.Create(a.logPath)
	if err != nil {
		b.Fatal(err)
	}
	a.cmd = exec.Command(args[0], args[1:]...)
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	a.cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	a.start = time.Now()
	if err := a.cmd.Start(); err != nil {
		b.Fatalf("start agent: %v", err)
	}
	go func() { a.exited <- a.cmd.Wait(); logf.Close() }()
	b.Cleanup(func() { a.stop(b) })
	return a
}

// stop ends the agent (SIGTERM) and removes its pins.
func (a *agentProc) stop(b *testing.B) {
	if a.cmd.ProcessState == nil && a.cmd.Process != nil {
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.exited:
		case <-time.After(30 * time.Second):
			_ = a.cmd.Process.Kill()
			<-a.exited
		}
	}
	if err := bpf.Cleanup(a.pinDir); err != nil {
		b.Logf("clean up %s: %v", a.pinDir, err)
	}
}

// failed reports a dead agent with its log's tail.
func (a *agentProc) failed() error {
	select {
	case err := <-a.exited:
		a.exited <- err
		data, _ := os.ReadFile(a.logPath)
		if len(data) > 4000 {
			data = data[len(data)-4000:]
		}
		return fmt.Errorf("agent exited: %v\n%s", err, data)
	default:
		return nil
	}
}

// status reads the agent's status API (without entries).
func (a *agentProc) status(ctx context.Context) (*agentv1.GetStatusResponse, error) {
	conn, err := grpc.NewClient("unix://"+a.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return agentv1.NewStatusClient(conn).GetStatus(ctx, &agentv1.GetStatusRequest{})
}

// memory forces a GC through the pprof endpoint, saving the heap profile
// to heapPath when set, and returns RSS and the Go heap in use.
func (a *agentProc) memory(b *testing.B, heapPath string) (rss, heap int64) {
	resp, err := http.Get("http://" + a.pprofAddr + "/debug/pprof/heap?gc=1")
	if err != nil {
		b.Fatal(err)
	}
	prof, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		b.Fatal(err)
	}
	if heapPath != "" {
		if err := os.WriteFile(heapPath, prof, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	heap = int64(a.metric(b, "go_memstats_heap_inuse_bytes"))
	return a.procStatus(b, "VmRSS:") << 10, heap
}

// metric returns the value of an unlabelled metric of /metrics.
func (a *agentProc) metric(b *testing.B, name string) float64 {
	resp, err := http.Get("http://" + a.metricsAddr + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				b.Fatalf("metric %s: %v", name, err)
			}
			return v
		}
	}
	b.Fatalf("no metric %s", name)
	return 0
}

// procStatus returns a kB field of /proc/<pid>/status.
func (a *agentProc) procStatus(b *testing.B, field string) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	for l := range bytes.SplitSeq(data, []byte("\n")) {
		if f := strings.Fields(string(l)); len(f) >= 2 && f[0] == field {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, a.cmd.Process.Pid)
	return 0
}

// cpu returns the agent's user+system CPU time so far (procmem.CPU).
func (a *agentProc) cpu(b *testing.B) time.Duration {
	d := procmem.CPU(a.cmd.Process.Pid)
	if d == 0 {
		b.Fatalf("no CPU time of the agent (pid %d)", a.cmd.Process.Pid)
	}
	return d
}

// cpuProfile fetches a CPU profile of the next d into path, once the pprof
// endpoint answers; errors are logged.
func (a *agentProc) cpuProfile(b *testing.B, d time.Duration, path string) {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", a.pprofAddr, int(d.Seconds())))
		if err != nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			err = os.WriteFile(path, data, 0o644)
		}
		if err != nil {
			b.Logf("cpu profile: %v", err)
		}
		return
	}
	b.Logf("cpu profile: pprof endpoint %s never answered", a.pprofAddr)
}
