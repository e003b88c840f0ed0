package statusapi

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	agentv1 "github.com/clustermesh/clustermesh/api/agent/v1"
)

// Fetch reads the status from the agent listening on socket.
func Fetch(ctx context.Context, socket string, includeEntries bool) (*agentv1.GetStatusResponse, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(512<<20))) // --entries with 250k ipcache entries is tens of MB
	if err != nil {
		return nil, fmt.Errorf("status socket %s: %w", socket, err)
	}
	defer conn.Close()
	resp, err := agentv1.NewStatusClient(conn).GetStatus(ctx, &agentv1.GetStatusRequest{IncludeEntries: includeEntries})
	if err != nil {
		return nil, fmt.Errorf("status from %s: %w", socket, err)
	}
	return resp, nil
}

// PrintJSON writes the status as indented protojson.
func PrintJSON(w io.Writer, resp *agentv1.GetStatusResponse) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}.Marshal(resp)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// waitingForCanary is the problem shown for a remote whose kinds wait for
// the sync canary of its emptied or replaced etcd.
const waitingForCanary = "waiting for the sync canary of its emptied or replaced etcd; serving the previous state"

// PrintTable writes the status as human-readable tables.
func PrintTable(w io.Writer, resp *agentv1.GetStatusResponse) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Cluster:\t%s (id %d), node %s\n", resp.GetClusterName(), resp.GetClusterId(), resp.GetNodeName())
	fmt.Fprintf(tw, "Datapath:\t%d batches, %d failures %s\n", resp.GetDatapathBatches(), resp.GetDatapathFailures(), resp.GetDatapathLastError())
	if ids := resp.GetRestoringClusterIds(); len(ids) > 0 {
		fmt.Fprintf(tw, "Restoring:\tcluster IDs %v held until they sync\n", ids)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "REMOTE\tID\tCONNECTED\tREADY\tNODES\tIDENTITIES\tIPCACHE\tSERVICES\tINVALID\tFAILURES\tRECONNECTS\tLAST CHANGE\tPROGRAMMED (SYNC TOOK)\tPROBLEM")
	for _, r := range resp.GetRemoteClusters() {
		counts := map[string]string{}
		var invalid uint64
		for _, k := range r.GetKinds() {
			mark := ""
			if !k.GetSynced() {
				mark = "*"
			}
			counts[k.GetKind()] = fmt.Sprintf("%d%s", k.GetEntries(), mark)
			invalid += k.GetInvalid()
		}
		problem := cmp.Or(r.GetRefusedReason(), r.GetPodCidrOverlap(), r.GetLastError())
		if problem == "" && r.GetWaitingForCanary() {
			problem = waitingForCanary
		}
		last := "-"
		if r.GetLastChange() != nil {
			last = r.GetLastChange().AsTime().Format(time.RFC3339)
		}
		programmed := "-"
		if r.GetProgrammedAt() != nil {
			programmed = fmt.Sprintf("%s (%s)", r.GetProgrammedAt().AsTime().Format(time.RFC3339), r.GetSyncDuration().AsDuration().Round(time.Millisecond))
		}
		fmt.Fprintf(tw, "%s\t%d\t%v\t%v\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\n", r.GetName(), r.GetId(), r.GetConnected(), r.GetReady(),
			counts["nodes"], counts["identities"], counts["ipcache"], counts["services"], invalid, r.GetFailures(), r.GetReconnects(), last, programmed, problem)
	}
	printClaims(tw, resp)
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "SERVICE\tFRONTEND\tBACKENDS (cluster:weight)")
	for _, s := range resp.GetServices() {
		var bs []string
		for _, b := range s.GetBackends() {
			c := b.GetCluster()
			if c == "" {
				c = fmt.Sprint(b.GetClusterId())
			}
			bs = append(bs, fmt.Sprintf("%s(%s:%d)", b.GetAddress(), c, b.GetWeight()))
		}
		fmt.Fprintf(tw, "%s/%s\t%s/%s\t%s\n", s.GetNamespace(), s.GetName(), s.GetFrontend(), s.GetProtocol(), strings.Join(bs, " "))
	}
	for _, s := range resp.GetProxyOnlyServices() {
		fmt.Fprintf(tw, "%s/%s\tkube-proxy's\t%s (egress decided against the address)\n", s.GetNamespace(), s.GetName(), s.GetReason())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	printPolicyStatus(w, resp.GetPolicy())
	if len(resp.GetTunnels()) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "TUNNEL CIDR\tNODE IP\tCLUSTER ID")
		for _, t := range resp.GetTunnels() {
			fmt.Fprintf(tw, "%s\t%s\t%d\n", t.GetCidr(), t.GetNodeIp(), t.GetClusterId())
		}
	}
	if len(resp.GetIpcache()) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "IPCACHE PREFIX\tIDENTITY\tTUNNEL ENDPOINT\tCLUSTER ID")
		for _, e := range resp.GetIpcache() {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%d\n", e.GetPrefix(), e.GetIdentity(), e.GetTunnelEndpoint(), e.GetClusterId())
		}
	}
	return tw.Flush()
}

// printClaims writes the remotes' refused claims and conflicts, if any.
func printClaims(w io.Writer, resp *agentv1.GetStatusResponse) {
	header := false
	for _, r := range resp.GetRemoteClusters() {
		for _, c := range r.GetRefusedClaims() {
			if !header {
				fmt.Fprintln(w)
				fmt.Fprintln(w, "REMOTE\tREFUSED CLAIMS\tREASON\tEXAMPLES")
				header = true
			}
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\n", r.GetName(), c.GetCount(), c.GetReason(), strings.Join(c.GetExamples(), ", "))
		}
	}
	header = false
	for _, r := range resp.GetRemoteClusters() {
		for _, c := range r.GetConflicts() {
			if !header {
				fmt.Fprintln(w)
				fmt.Fprintln(w, "REMOTE\tCONFLICT\tCLAIMANTS (all withdrawn)")
				header = true
			}
			fmt.Fprintf(w, "%s\t%s %s\t%s\n", r.GetName(), c.GetKind(), c.GetPrefix(), strings.Join(c.GetClaimants(), ", "))
		}
	}
}
