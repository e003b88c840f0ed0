package peer

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	agentv1 "github.com/clustermesh/clustermesh/api/agent/v1"
	"github.com/clustermesh/clustermesh/bench/internal/agentproc"
	"github.com/clustermesh/clustermesh/bench/internal/procmem"
	"github.com/clustermesh/clustermesh/bench/internal/remotedata"
	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/hostload"
	"github.com/clustermesh/clustermesh/internal/kubetest"
)

// pollEvery is how often the binary's cold sync is polled: its status API
// until the remote is ready with all its entries and programmed (the
// agent's programmed_at). A count of the pinned maps (bpf.CountPinned)
// then checks, untimed, that they hold every entry.
const pollEvery = 10 * time.Millisecond

// statusCostCalls is how many back-to-back status calls measure one call's
// CPU (the counters of /proc tick in 10 ms).
const statusCostCalls = 500

// binary is what the agent binary's side needs: the binary and a
// kube-apiserver of its own cluster (c1, empty).
type binary struct {
	bin, kubeconfig string
}

// setupBinary prepares the binary's side, or says why it cannot run: it
// needs root (the eBPF datapath) and KUBE_BIN_DIR (the kube-apiserver).
func setupBinary(b *testing.B, useBPF bool) (binary, string) {
	if !useBPF {
		return binary{}, "needs root and the eBPF datapath (BENCH_PEER_DATAPATH not memory)"
	}
	dir := os.Getenv("KUBE_BIN_DIR")
	for _, name := range []string{"kube-apiserver", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(dir, name)); dir == "" || err != nil {
			return binary{}, "needs KUBE_BIN_DIR with kube-apiserver and kube-controller-manager (hack/kube-bins.sh; make bench-peer sets it)"
		}
	}
	cp := kubetest.StartForTest(b, kubetest.Config{Name: "c1"})
	return binary{bin: agentproc.Bin(b, b.TempDir()), kubeconfig: cp.Kubeconfig()}, ""
}

// binaryRun is one cold sync of the agent binary.
type binaryRun struct {
	load string
	// Since the config file of the full remote was written: the status
	// shows it ready with all its entries; programmed is the remote's
	// programmed_at (the agent's clock, this machine's: the return of the
	// datapath flush that holds the remote's full state); then the
	// reconciler returned the sync's memory to the OS.
	ready, programmed, trimmed time.Duration
	// The agent's own sync_duration of the remote (its session's start →
	// programmed_at).
	agentSync   time.Duration
	check       time.Duration // wall time of the untimed pinned-map count
	statusPolls int
	benchCPU    time.Duration // this process's CPU over the polling (status calls)
	rss0, heap0 int64         // baseline: connected to the empty remote, synced, trimmed
	rss, heap   int64         // growth over the baseline after the full sync and its trim
	// What of the RSS growth is not live heap (read after the RSS): freed
	// heap not returned to the OS, and the runtime's own memory (stacks,
	// span and GC metadata); the baseline's in the fields ending in 0.
	unreturned, runtimeSys   int64
	unreturned0, runtimeSys0 int64
	cpu, etcdCPU             time.Duration // CPU of the agent and of etcd, config write → programmed
	// CPU of one status call on an idle agent, in the agent and here
	// (round 1 only).
	statusAgentCPU, statusBenchCPU time.Duration
}

// runBinary starts the agent binary connected to the empty remote, takes
// its baseline, adds the full remote's config file and times the cold sync
// until every entry is in the pinned maps; then its memory after the trim.
func runBinary(b *testing.B, bin binary, fullURL, emptyURL string, etcdPID int, first bool) binaryRun {
	ctx := context.Background()
	r := binaryRun{load: hostload.Average()}
	dir := b.TempDir()
	writeConfig(b, dir, empty.Cluster, emptyURL)
	p := agentproc.Start(b, agentproc.Options{Bin: bin.bin, Kubeconfig: bin.kubeconfig, RemotesDir: dir, Name: "bench-peer"})
	defer p.Stop(b)
	status := func() *agentv1.GetStatusResponse {
		if err := p.Failed(); err != nil {
			b.Fatal(err)
		}
		st, err := p.Status(ctx)
		if err != nil {
			return nil
		}
		return st
	}
	// Baseline: ready (own cluster and the empty remote), the sync's
	// memory returned, and no batch or trim for a few polls (a second
	// Release's trim may follow the first).
	var st *agentv1.GetStatusResponse
	quiet := 0
	pollUntil(b, time.Minute, pollEvery, "binary: baseline ready and trimmed", func() bool {
		ok, _ := p.Ready()
		prev := st
		st = status()
		if !ok || st.GetDatapathTrims() == 0 {
			return false
		}
		if prev != nil && prev.GetDatapathTrims() == st.GetDatapathTrims() && prev.GetDatapathBatches() == st.GetDatapathBatches() {
			quiet++
		} else {
			quiet = 0
		}
		return quiet >= 5 // 50 ms
	})
	r.rss0, r.heap0 = p.Memory(b, "")
	r.unreturned0, r.runtimeSys0 = residentBeyondHeap(b, p)
	trims0 := st.GetDatapathTrims()
	if first {
		r.statusAgentCPU, r.statusBenchCPU = statusCost(b, p)
	}
	profDir := os.Getenv("BENCH_PEER_AGENT_PROFILE_DIR")
	profiled := make(chan struct{})
	if profDir != "" && first {
		go func() {
			defer close(profiled)
			p.CPUProfile(b, 5*time.Second, filepath.Join(profDir, "peer-agent-sync.cpu.pprof"))
		}()
		time.Sleep(100 * time.Millisecond) // the profile has started
	} else {
		close(profiled)
	}

	cpu0, etcd0, bench0 := p.CPU(b), procmem.CPU(etcdPID), procmem.CPU(0)
	start := time.Now()
	writeConfig(b, dir, full.Cluster, fullURL)
	pollUntil(b, 5*time.Minute, pollEvery, "binary: remote synced", func() bool {
		r.statusPolls++
		ok, _ := agentproc.Synced(status(), []remotedata.Set{full, empty})
		return ok
	})
	r.ready = time.Since(start)
	var at *agentv1.RemoteCluster
	pollUntil(b, 5*time.Minute, pollEvery, "binary: remote programmed", func() bool {
		r.statusPolls++
		at = agentproc.Remote(status(), full.Cluster)
		return at.GetProgrammedAt() != nil
	})
	r.cpu, r.etcdCPU, r.benchCPU = p.CPU(b)-cpu0, procmem.CPU(etcdPID)-etcd0, procmem.CPU(0)-bench0
	r.programmed, r.agentSync = at.GetProgrammedAt().AsTime().Sub(start), at.GetSyncDuration().AsDuration()
	t0 := time.Now()
	c, err := bpf.CountPinned(p.PinDir)
	if err != nil {
		b.Fatal(err)
	}
	r.check = time.Since(t0)
	if c.Tunnels < full.Nodes || c.IPCache < full.IPs {
		b.Fatalf("binary: programmed, but the pinned maps hold %d tunnels and %d ipcache entries of the %d and %d", c.Tunnels, c.IPCache, full.Nodes, full.IPs)
	}
	pollUntil(b, time.Minute, pollEvery, "binary: memory returned after the sync", func() bool {
		return status().GetDatapathTrims() > trims0
	})
	r.trimmed = time.Since(start)
	<-profiled
	heapPath := ""
	if first {
		heapPath = filepath.Join(b.TempDir(), "agent-heap.pprof")
		if profDir != "" {
			heapPath = filepath.Join(profDir, "peer-agent-synced.heap.pprof")
		}
	}
	rss, heap := p.Memory(b, heapPath)
	r.rss, r.heap = rss-r.rss0, heap-r.heap0
	r.unreturned, r.runtimeSys = residentBeyondHeap(b, p)
	r.unreturned -= r.unreturned0
	r.runtimeSys -= r.runtimeSys0
	if heapPath != "" {
		out, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=16", "-sample_index=inuse_space", bin.bin, heapPath).CombinedOutput()
		if err != nil {
			b.Logf("pprof: %v", err)
		}
		b.Logf("heap profile of the synced agent binary (%s):\n%s", heapPath, out)
	}
	return r
}

// statusCost returns the CPU of one status call on the idle agent: in the
// agent (over its idle rate, measured alongside for as long) and in this
// process.
func statusCost(b *testing.B, p *agentproc.Proc) (agent, bench time.Duration) {
	idle0, t0 := p.CPU(b), time.Now()
	time.Sleep(time.Second) // the idle window
	idleRate := float64(p.CPU(b)-idle0) / float64(time.Since(t0))
	a0, b0, t1 := p.CPU(b), procmem.CPU(0), time.Now()
	for range statusCostCalls {
		if _, err := p.Status(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	wall := time.Since(t1)
	agent = (p.CPU(b) - a0 - time.Duration(idleRate*float64(wall))) / statusCostCalls
	return max(0, agent), (procmem.CPU(0) - b0) / statusCostCalls
}

// residentBeyondHeap returns the agent's freed heap not yet returned to the
// OS (idle less released) and its runtime memory beside the heap (stacks,
// span, GC and other metadata), from its metrics.
func residentBeyondHeap(b *testing.B, p *agentproc.Proc) (unreturned, runtimeSys int64) {
	m := func(name string) int64 { return int64(p.Metric(b, name)) }
	unreturned = m("go_memstats_heap_idle_bytes") - m("go_memstats_heap_released_bytes")
	for _, name := range []string{"go_memstats_stack_inuse_bytes", "go_memstats_mspan_inuse_bytes", "go_memstats_gc_sys_bytes", "go_memstats_other_sys_bytes"} {
		runtimeSys += m(name)
	}
	return unreturned, runtimeSys
}
