package agentproc

import (
	"bufio"
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
	"github.com/clustermesh/clustermesh/bench/internal/remotedata"
	"github.com/clustermesh/clustermesh/bpf"
)

// BinEnv names a prebuilt agent binary (make bench-scale and bench-peer
// set it); without it Bin builds one.
const BinEnv = "CLUSTERMESH_AGENT_BIN"

// Bin returns the agent binary: $CLUSTERMESH_AGENT_BIN, else one built now
// from this module into dir.
func Bin(tb testing.TB, dir string) string {
	tb.Helper()
	if p := os.Getenv(BinEnv); p != "" {
		return p
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		tb.Fatalf("go env GOMOD: %v", err)
	}
	bin := filepath.Join(dir, "clustermesh-agent")
	cmd := exec.Command("go", "build", "-o", bin, "./agent")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(out)))
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("build the agent: %v\n%s", err, out)
	}
	return bin
}

// Options are the settings of one agent process.
type Options struct {
	Bin        string
	Kubeconfig string // the own cluster's kube-apiserver
	// RemotesDir is --clustermesh-config: one config file per remote.
	RemotesDir string
	// CacheConfig is --clustermesh-cache-config (kvstoremesh mode; ""
	// connects to every remote directly).
	CacheConfig string
	// Datapath is "bpf" (the default; needs root) or "memory".
	Datapath string
	// Name prefixes the pin directory (/run/clustermesh-test/<Name>-<id>).
	Name string
	// CPU pins the process with taskset ("": unpinned).
	CPU string
	// GOMAXPROCS sets the agent's GOMAXPROCS; 0 leaves the Go runtime's
	// default (every CPU), as a user runs it: a GOMAXPROCS of the
	// benchmark's environment is not passed on.
	GOMAXPROCS int
}

// Proc is a running agent binary.
type Proc struct {
	// Start is when the process was started.
	Start time.Time
	// PinDir is its bpffs pin directory (its maps under maps/).
	PinDir string

	cmd                    *exec.Cmd
	dir, socket, logPath   string
	metricsAddr, pprofAddr string
	conn                   *grpc.ClientConn
	exited                 chan error
}

// Start starts the agent; it is stopped (and its pins removed) when the
// test ends, or earlier by Stop.
func Start(tb testing.TB, o Options) *Proc {
	tb.Helper()
	if o.Datapath == "" {
		o.Datapath = "bpf"
	}
	if o.Name == "" {
		o.Name = "bench-agent"
	}
	dir := tb.TempDir()
	p := &Proc{
		dir: dir, PinDir: "/run/clustermesh-test/" + o.Name + "-" + strconv.FormatInt(time.Now().UnixNano(), 36),
		socket: filepath.Join(dir, "agent.sock"), metricsAddr: freeAddr(tb), pprofAddr: freeAddr(tb),
		logPath: filepath.Join(dir, "agent.log"), exited: make(chan error, 1),
	}
	args := []string{o.Bin, "--node-name", "n1", "--cluster-name", "c1", "--cluster-id", "1",
		"--kubeconfig", o.Kubeconfig, "--datapath", o.Datapath, "--state-dir", filepath.Join(dir, "state"),
		"--status-socket", p.socket, "--metrics-address", p.metricsAddr, "--pprof-address", p.pprofAddr,
		"--clustermesh-config", o.RemotesDir,
		"--bpf-pin-dir", p.PinDir, "--bpf-ct-entries", "1024", "--tunnel-device", ""}
	if o.CacheConfig != "" {
		args = append(args, "--clustermesh-cache-config", o.CacheConfig)
	}
	if o.CPU != "" {
		args = append([]string{"taskset", "-c", o.CPU}, args...)
	}
	logf, err := os.Create(p.logPath)
	if err != nil {
		tb.Fatal(err)
	}
	p.cmd = exec.Command(args[0], args[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.Env = environ(o.GOMAXPROCS)
	p.Start = time.Now()
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		tb.Fatalf("start agent: %v", err)
	}
	go func() { p.exited <- p.cmd.Wait(); logf.Close() }()
	tb.Cleanup(func() { p.Stop(tb) })
	p.conn, err = grpc.NewClient("unix://"+p.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatalf("status client: %v", err)
	}
	return p
}

// environ is this process's environment with GOMAXPROCS set to n, or
// without it for 0.
func environ(n int) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GOMAXPROCS=") {
			env = append(env, kv)
		}
	}
	if n > 0 {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(n))
	}
	return env
}

func freeAddr(tb testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// PID is the agent's process ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Stop ends the agent (SIGTERM, SIGKILL after 30 s) and removes its pins;
// a second call only removes the pins again.
func (p *Proc) Stop(tb testing.TB) {
	select {
	case err := <-p.exited:
		p.exited <- err
	default:
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.exited:
			p.exited <- err
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			p.exited <- <-p.exited
		}
	}
	if p.conn != nil {
		p.conn.Close()
	}
	if err := bpf.Cleanup(p.PinDir); err != nil {
		tb.Logf("clean up %s: %v", p.PinDir, err)
	}
}

// Failed reports an agent that has exited, with its log's tail; nil while
// it runs.
func (p *Proc) Failed() error {
	select {
	case err := <-p.exited:
		p.exited <- err
		return fmt.Errorf("agent exited: %v\n%s", err, p.LogTail(4000))
	default:
		return nil
	}
}

// LogTail returns the last n bytes of the agent's log.
func (p *Proc) LogTail(n int) string {
	data, _ := os.ReadFile(p.logPath)
	if len(data) > n {
		data = data[len(data)-n:]
	}
	return string(data)
}

// Status reads the agent's status API (without entries) over the one
// connection the Proc keeps.
func (p *Proc) Status(ctx context.Context) (*agentv1.GetStatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return agentv1.NewStatusClient(p.conn).GetStatus(ctx, &agentv1.GetStatusRequest{})
}

// Ready reports whether /readyz answers 200 (the own cluster synced and
// every remote settled) and otherwise its reasons.
func (p *Proc) Ready() (bool, string) {
	resp, err := http.Get("http://" + p.metricsAddr + "/readyz")
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode == http.StatusOK, strings.TrimSpace(string(body))
}

// Memory forces a GC through the pprof endpoint, saving the heap profile
// to heapPath when set, and returns the resident set (VmRSS) and the Go
// heap in use, in bytes.
func (p *Proc) Memory(tb testing.TB, heapPath string) (rss, heap int64) {
	tb.Helper()
	resp, err := http.Get("http://" + p.pprofAddr + "/debug/pprof/heap?gc=1")
	if err != nil {
		tb.Fatal(err)
	}
	prof, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		tb.Fatal(err)
	}
	if heapPath != "" {
		if err := os.WriteFile(heapPath, prof, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	heap = int64(p.Metric(tb, "go_memstats_heap_inuse_bytes"))
	rss = int64(procmem.RSSOf(p.PID()))
	if rss == 0 {
		tb.Fatalf("no RSS of the agent (pid %d)", p.PID())
	}
	return rss, heap
}

// Metric returns the value of an unlabelled metric of /metrics.
func (p *Proc) Metric(tb testing.TB, name string) float64 {
	tb.Helper()
	resp, err := http.Get("http://" + p.metricsAddr + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				tb.Fatalf("metric %s: %v", name, err)
			}
			return v
		}
	}
	tb.Fatalf("no metric %s", name)
	return 0
}

// CPU returns the agent's user+system CPU time so far (procmem.CPU: 10 ms
// resolution).
func (p *Proc) CPU(tb testing.TB) time.Duration {
	tb.Helper()
	d := procmem.CPU(p.PID())
	if d == 0 {
		tb.Fatalf("no CPU time of the agent (pid %d)", p.PID())
	}
	return d
}

// CPUProfile fetches a CPU profile of the next d into path, once the pprof
// endpoint answers; errors are logged.
func (p *Proc) CPUProfile(tb testing.TB, d time.Duration, path string) {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", p.pprofAddr, max(1, int(d.Seconds()))))
		if err != nil {
			time.Sleep(20 * time.Millisecond) // the endpoint is not up yet
			continue
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			err = os.WriteFile(path, data, 0o644)
		}
		if err != nil {
			tb.Logf("cpu profile: %v", err)
		}
		return
	}
	tb.Logf("cpu profile: pprof endpoint %s never answered", p.pprofAddr)
}

// Remote returns the remote cluster name of the status, nil if it has none.
func Remote(st *agentv1.GetStatusResponse, name string) *agentv1.RemoteCluster {
	for _, r := range st.GetRemoteClusters() {
		if r.GetName() == name {
			return r
		}
	}
	return nil
}

// Synced reports whether the status shows every set ready with all its
// entries.
func Synced(st *agentv1.GetStatusResponse, sets []remotedata.Set) (bool, string) {
	if st == nil || len(st.GetRemoteClusters()) != len(sets) {
		return false, fmt.Sprintf("%d remotes", len(st.GetRemoteClusters()))
	}
	want := map[string]remotedata.Set{}
	for _, s := range sets {
		want[s.Cluster] = s
	}
	ready := 0
	for _, r := range st.GetRemoteClusters() {
		s := want[r.GetName()]
		ok := r.GetReady()
		for _, k := range r.GetKinds() {
			n := map[string]int{"nodes": s.Nodes, "identities": s.Identities, "ipcache": s.IPs, "services": s.Services}[k.GetKind()]
			ok = ok && int(k.GetEntries()) == n
		}
		if ok {
			ready++
		}
	}
	return ready == len(sets), fmt.Sprintf("%d of %d remotes synced", ready, len(sets))
}
