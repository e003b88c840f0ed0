package bpf_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/netnstest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// agentEnv makes the test binary act as a short-lived agent (agentMain): it
// loads the datapath from the pins, attaches, reports what it restored,
// applies a batch and exits, so the maps outlive their owner process.
const agentEnv = "CM_BPF_TEST_AGENT"

type agentRequest struct {
	PinDir string
	NetNS  string
	Attach []attachment
	Batch  datapath.Batch
}

type attachment struct {
	Hook    bpf.Hook
	IfIndex int
}

type agentReply struct {
	Restored string // formatState of the Dump at start
	Err      string
}

func agentMain() int {
	var req agentRequest
	var rep agentReply
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		rep.Err = err.Error()
	} else if err := runAgent(req, &rep); err != nil {
		rep.Err = err.Error()
	}
	_ = json.NewEncoder(os.Stdout).Encode(rep)
	return 0
}

func runAgent(req agentRequest, rep *agentReply) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	dp, err := bpf.Open(bpf.Config{PinDir: req.PinDir, CTEntries: testCTEntries}, log)
	if err != nil {
		return err
	}
	defer dp.Close() // keeps the pins: the datapath outlives us
	w, err := bpf.NewWriter(dp, log)
	if err != nil {
		return err
	}
	st, err := w.Dump()
	if err != nil {
		return err
	}
	rep.Restored = formatState(st)
	err = (&netnstest.NS{Name: req.NetNS}).Do(func() error {
		for _, a := range req.Attach {
			if err := dp.Attach(a.Hook, a.IfIndex); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return w.Apply(context.Background(), req.Batch)
}

// runAgentProcess runs one agent process to completion.
func runAgentProcess(t *testing.T, req agentRequest) agentReply {
	t.Helper()
	in, _ := json.Marshal(req)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), agentEnv+"=1")
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("agent process: %v\n%s", err, stderr.String())
	}
	var rep agentReply
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("agent reply %q: %v", out, err)
	}
	if rep.Err != "" {
		t.Fatalf("agent: %s\n%s", rep.Err, stderr.String())
	}
	return rep
}

// formatState renders a State canonically (sorted lines) for comparison.
func formatState(st datapath.State) string {
	var lines []string
	for _, v := range st.Tunnels {
		lines = append(lines, fmt.Sprintf("tunnel %v", v))
	}
	for _, v := range st.IPCache {
		lines = append(lines, fmt.Sprintf("ipcache %v", v))
	}
	for _, v := range st.Endpoints {
		lines = append(lines, fmt.Sprintf("endpoint %v", v))
	}
	for _, v := range st.Services {
		lines = append(lines, fmt.Sprintf("service %v", v))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// TestRestart: the process that owns the maps exits and a new one starts;
// established connections (direct and through a service) keep working in
// between and after, the new process restores exactly the programmed state
// from the pins, and new connections and changes work.
func TestRestart(t *testing.T) {
	testenv.RequireRoot(t)
	var topo *netnstest.Topology
	t.Cleanup(func() { checkNothingLeft(t, topo) })
	topo = netnstest.New(t, netnstest.Config{Nodes: 2, PodsPerNode: 2})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var reqs []agentRequest
	for _, n := range topo.Nodes {
		cfg := bpf.Config{PinDir: fmt.Sprintf("%s/%s-%s", testPinRoot, topo.ID, n.Name), CTEntries: testCTEntries}
		t.Cleanup(func() { // as the uninstall step of a real agent would
			dp, err := bpf.Open(cfg, log)
			if err == nil {
				err = dp.Uninstall()
			}
			if err != nil {
				t.Errorf("uninstall %s: %v", n.Name, err)
			}
			checkDetached(t, n)
		})
		req := agentRequest{PinDir: cfg.PinDir, NetNS: n.NS.Name, Batch: connectivity(topo, n)}
		req.Attach = append(req.Attach, attachment{bpf.HookTunnel, n.TunnelIfIndex})
		for _, p := range n.Pods {
			req.Attach = append(req.Attach, attachment{bpf.HookEndpoint, p.HostIfIndex})
		}
		reqs = append(reqs, req)
	}
	client := topo.Nodes[0].Pods[0]
	remote := topo.Nodes[1].Pods
	for _, p := range topo.Pods()[1:] {
		serve(t, p, backendPort)
	}
	reqs[0].Batch.UpsertServices = []datapath.Service{service(tcpVIP, remote)}

	// What the first agent programs, per the in-memory reference datapath.
	want := memory.New()
	if err := want.Apply(context.Background(), reqs[0].Batch); err != nil {
		t.Fatal(err)
	}
	for _, req := range reqs {
		if rep := runAgentProcess(t, req); rep.Restored != "" {
			t.Fatalf("fresh pins restored %q", rep.Restored)
		}
	}
	// No process holds the datapath now: traffic flows from the pins.
	direct, directR, _, err := dialTCP(client, netip.AddrPortFrom(remote[0].IP, backendPort))
	if err != nil {
		t.Fatalf("direct connection: %v", err)
	}
	defer direct.Close()
	viaVIP, viaVIPR, _, err := dialTCP(client, tcpVIP.Addr)
	if err != nil {
		t.Fatalf("connection to %s: %v", tcpVIP, err)
	}
	defer viaVIP.Close()

	// Restart node 1's agent: it restores the state and adds a backend.
	wantState, _ := want.Dump()
	req := reqs[0]
	req.Batch = datapath.Batch{UpsertServices: []datapath.Service{service(tcpVIP, append([]*netnstest.Pod{topo.Nodes[0].Pods[1]}, remote...))}}
	rep := runAgentProcess(t, req)
	if rep.Restored != formatState(wantState) {
		t.Errorf("restored state differs:\n got: %s\nwant: %s", rep.Restored, formatState(wantState))
	}
	// And node 2's agent restarts too, changing nothing.
	reqs[1].Batch = datapath.Batch{}
	runAgentProcess(t, reqs[1])

	for i := range 3 {
		if err := echo(direct, directR, fmt.Sprint("direct ", i)); err != nil {
			t.Errorf("established direct connection after restart: %v", err)
		}
		if err := echo(viaVIP, viaVIPR, fmt.Sprint("vip ", i)); err != nil {
			t.Errorf("established service connection after restart: %v", err)
		}
	}
	counts := connectMany(t, client, tcpVIP, 60)
	if len(counts) != 3 || counts[topo.Nodes[0].Pods[1].Name] == 0 {
		t.Errorf("new connections after restart (with the added backend): %v", counts)
	}
	if _, err := udpRoundTrip(client, netip.AddrPortFrom(remote[1].IP, backendPort)); err != nil {
		t.Errorf("new udp flow after restart: %v", err)
	}
}
