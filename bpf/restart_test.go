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

// agentEnv makes the test binary act as an agent (agentMain): it loads the
// datapath from the pins, reports what it restored, attaches, applies a
// batch and runs until its stdin is closed; the maps outlive the process.
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
	in := json.NewDecoder(os.Stdin)
	if err := in.Decode(&req); err != nil {
		rep.Err = err.Error()
	} else if err := runAgent(req, &rep); err != nil {
		rep.Err = err.Error()
	}
	_ = json.NewEncoder(os.Stdout).Encode(rep)
	// Run until told to stop (stdin closed), holding the datapath open.
	_, _ = io.Copy(io.Discard, io.MultiReader(in.Buffered(), os.Stdin))
	return 0
}

func runAgent(req agentRequest, rep *agentReply) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	dp, err := bpf.Open(bpf.Config{PinDir: req.PinDir, CTEntries: testCTEntries}, log)
	if err != nil {
		return err
	}
	// dp stays open until the process exits; Close would keep the pins as
	// well: the datapath outlives its owner either way.
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

// agentProcess is a running agent (see agentMain).
type agentProcess struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr bytes.Buffer
}

// startAgent starts an agent process and waits until it has programmed req.
func startAgent(t *testing.T, req agentRequest) (*agentProcess, agentReply) {
	t.Helper()
	a := &agentProcess{cmd: exec.Command(os.Args[0], "-test.run=^$")}
	a.cmd.Env = append(os.Environ(), agentEnv+"=1")
	a.cmd.Stderr = &a.stderr
	var err error
	if a.stdin, err = a.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := a.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.stop(t) })
	if err := json.NewEncoder(a.stdin).Encode(req); err != nil {
		t.Fatal(err)
	}
	var rep agentReply
	if err := json.NewDecoder(out).Decode(&rep); err != nil {
		a.stop(t)
		t.Fatalf("agent reply: %v\n%s", err, a.stderr.String())
	}
	if rep.Err != "" {
		a.stop(t)
		t.Fatalf("agent: %s\n%s", rep.Err, a.stderr.String())
	}
	return a, rep
}

// stop ends the agent process (closing its stdin) and waits for it.
func (a *agentProcess) stop(t *testing.T) {
	if a.cmd.ProcessState != nil {
		return
	}
	a.stdin.Close()
	if err := a.cmd.Wait(); err != nil {
		t.Errorf("agent process: %v\n%s", err, a.stderr.String())
	}
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

// TestRestart: agents (this test binary re-executed, see agentMain) load the
// datapath, program it and keep running; connections are established
// (direct and through a service). The agents exit: the connections and new
// ones keep working from the pins alone. New agents start: they restore
// exactly the programmed state (compared with the in-memory reference),
// switch the links to their programs and apply a change; the established
// connections survive, new connections work and use the change.
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
	var agents []*agentProcess
	for _, req := range reqs {
		a, rep := startAgent(t, req)
		if rep.Restored != "" {
			t.Fatalf("fresh pins restored %q", rep.Restored)
		}
		agents = append(agents, a)
	}
	// Connections established while the first agents run.
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

	// The agents exit: no process holds the datapath, traffic flows from
	// the pins.
	for _, a := range agents {
		a.stop(t)
	}
	if err := echo(direct, directR, "while no agent runs"); err != nil {
		t.Errorf("established direct connection with no agent: %v", err)
	}
	if err := echo(viaVIP, viaVIPR, "while no agent runs"); err != nil {
		t.Errorf("established service connection with no agent: %v", err)
	}
	if _, err := tcpRoundTrip(client, tcpVIP.Addr); err != nil {
		t.Errorf("new connection with no agent: %v", err)
	}

	// Node 1's agent starts again: it restores the state and adds a backend.
	wantState, _ := want.Dump()
	req := reqs[0]
	req.Batch = datapath.Batch{UpsertServices: []datapath.Service{service(tcpVIP, append([]*netnstest.Pod{topo.Nodes[0].Pods[1]}, remote...))}}
	_, rep := startAgent(t, req)
	if rep.Restored != formatState(wantState) {
		t.Errorf("restored state differs:\n got: %s\nwant: %s", rep.Restored, formatState(wantState))
	}
	// And node 2's agent too, changing nothing.
	reqs[1].Batch = datapath.Batch{}
	startAgent(t, reqs[1])

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
