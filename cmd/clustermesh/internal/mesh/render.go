package mesh

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/clustermesh/clustermesh/internal/meshstatus"
)

// RenderStatus writes st as tables and a final one-line verdict.
func RenderStatus(w io.Writer, st MeshStatus) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLUSTER\tID\tCONTEXT\tAPISERVER\tIDENTITIES\tREMOTES\tAGENTS READY")
	for _, c := range st.Clusters {
		api, ids := "not reported", "-"
		if c.Unreachable {
			api = "cannot reach"
		} else if !c.Enabled {
			api = "not enabled"
		} else if c.APIServer != nil {
			api = map[bool]string{true: "ready", false: "not ready"}[c.APIServer.Ready]
			ids = strconv.Itoa(c.APIServer.Identities)
		}
		ready := 0
		for _, a := range c.Agents {
			if agentReady(a, c.Remotes) {
				ready++
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\n", dash(c.Cluster), idString(c.ClusterID), c.Context, api, ids,
			dash(strings.Join(c.Remotes, ",")), ready, len(c.Agents))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, c := range st.Clusters {
		if len(c.Agents) == 0 {
			continue
		}
		fmt.Fprintf(w, "\nAgents of %s:\n", clusterLabel(c))
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tREMOTE\tID\tSTATE\tNODES\tSERVICES\tIDENTITIES\tIPS\tINVALID\tRECONNECTS\tSYNC TOOK\tLAST ERROR")
		for _, a := range c.Agents {
			if len(a.Remotes) == 0 {
				fmt.Fprintf(tw, "%s\t-\t-\tno remotes\t\t\t\t\t\t\t\t\n", a.Node)
			}
			for _, r := range a.Remotes {
				state := remoteState(r)
				if r.Cached {
					state += " (kvstoremesh)" // read through the own cluster's cache
				}
				took := "-"
				if !r.ProgrammedAt.IsZero() {
					took = fmt.Sprintf("%.3gs", r.SyncSeconds)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", a.Node, r.Name, idString(r.ClusterID), state,
					entries(r, meshstatus.KindNodes), entries(r, meshstatus.KindServices), entries(r, meshstatus.KindIdentities),
					entries(r, meshstatus.KindIPCache), r.Invalid, r.Reconnects, took, dash(r.LastError))
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		renderWorldIngress(w, c.Agents)
	}
	if err := renderKVStoreMesh(w, st); err != nil {
		return err
	}
	if unsynced(st) {
		fmt.Fprintln(w, "(* initial sync of that kind not complete)")
	}
	if err := renderClaims(w, st); err != nil {
		return err
	}
	var problems []string
	for _, c := range st.Clusters {
		for _, p := range c.Problems {
			problems = append(problems, "  "+clusterLabel(c)+": "+p)
		}
	}
	if len(problems) > 0 {
		fmt.Fprintf(w, "\nProblems:\n%s\n", strings.Join(problems, "\n"))
	}
	_, err := fmt.Fprintf(w, "\n%s\n", st.Verdict)
	return err
}

// renderClaims lists the remote claims that agents refuse (counts by
// reason) and the conflicts between remotes, with both claimants.
func renderClaims(w io.Writer, st MeshStatus) error {
	var tw *tabwriter.Writer
	row := func(format string, args ...any) {
		if tw == nil {
			fmt.Fprintln(w, "\nRefused remote claims:")
			tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CLUSTER\tNODE\tREMOTE\tREFUSED\tREASON")
		}
		fmt.Fprintf(tw, format, args...)
	}
	for _, c := range st.Clusters {
		for _, a := range c.Agents {
			for _, r := range a.Remotes {
				for _, reason := range slices.Sorted(maps.Keys(r.Refused)) {
					row("%s\t%s\t%s\t%d\t%s\n", clusterLabel(c), a.Node, r.Name, r.Refused[reason], reason)
				}
				for _, cf := range r.Conflicts {
					row("%s\t%s\t%s\t%s %s\tconflict between %s (all withdrawn)\n", clusterLabel(c), a.Node, r.Name,
						cf.Kind, cf.Prefix, strings.Join(cf.Claimants, ", "))
				}
			}
		}
	}
	if tw == nil {
		return nil
	}
	return tw.Flush()
}

func agentReady(a meshstatus.AgentReport, want []string) bool {
	have := map[string]bool{}
	for _, r := range a.Remotes {
		if !r.Ready {
			return false
		}
		have[r.Name] = true
	}
	for _, w := range want {
		if !have[w] {
			return false
		}
	}
	return true
}

func entries(r meshstatus.Remote, kind string) string {
	n, ok := r.Entries[kind]
	if !ok {
		return "-"
	}
	s := strconv.Itoa(n)
	if !r.Synced[kind] {
		s += "*"
	}
	return s
}

func idString(id uint32) string {
	if id == 0 {
		return "-"
	}
	return strconv.FormatUint(uint64(id), 10)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func unsynced(st MeshStatus) bool {
	for _, c := range st.Clusters {
		for _, a := range c.Agents {
			for _, r := range a.Remotes {
				for k := range r.Entries {
					if !r.Synced[k] {
						return true
					}
				}
			}
		}
	}
	return false
}

// renderKVStoreMesh lists, per cluster whose apiserver runs a kvstoremesh,
// its mirror of each remote cluster.
func renderKVStoreMesh(w io.Writer, st MeshStatus) error {
	for _, c := range st.Clusters {
		if c.APIServer == nil || len(c.APIServer.KVStoreMesh) == 0 {
			continue
		}
		fmt.Fprintf(w, "\nKVStoreMesh of %s:\n", clusterLabel(c))
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "REMOTE\tID\tSTATE\tNODES\tSERVICES\tIDENTITIES\tIPS\tINVALID\tLAST ERROR")
		for _, r := range c.APIServer.KVStoreMesh {
			n := func(kind string) string { return strconv.Itoa(r.Entries[kind]) }
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", r.Name, idString(r.ClusterID), cachedState(r),
				n(meshstatus.KindNodes), n(meshstatus.KindServices), n(meshstatus.KindIdentities), n(meshstatus.KindIPCache), r.Invalid, dash(r.LastError))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// renderWorldIngress says whether the agents' pods' ingress policy decides
// world on the host's path, once per distinct state with how many agents.
func renderWorldIngress(w io.Writer, agents []meshstatus.AgentReport) {
	count := map[string]int{}
	var order []string
	for _, a := range agents {
		if a.WorldIngress == "" {
			continue
		}
		if count[a.WorldIngress] == 0 {
			order = append(order, a.WorldIngress)
		}
		count[a.WorldIngress]++
	}
	for _, s := range order {
		fmt.Fprintf(w, "World ingress: %s (%d of %d agents)\n", s, count[s], len(agents))
	}
}
