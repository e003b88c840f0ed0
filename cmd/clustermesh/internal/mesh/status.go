package mesh

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/internal/meshstatus"
)

// StatusSchemaVersion is the version of the JSON that `status -o json`
// prints. Fields are only ever added.
const StatusSchemaVersion = 1

// MeshStatus is the status of every given cluster; it is the stable JSON
// schema of `clustermesh status -o json`.
type MeshStatus struct {
	Version  int             `json:"version"`
	Ready    bool            `json:"ready"`
	Verdict  string          `json:"verdict"`
	Clusters []ClusterStatus `json:"clusters"`
}

// ClusterStatus is one cluster's view.
type ClusterStatus struct {
	Context   string `json:"context"`
	Namespace string `json:"namespace"`
	// Enabled is false when the chart is not installed (no clustermesh-config).
	Enabled bool `json:"enabled"`
	// Unreachable is true when the cluster's kube-apiserver did not answer
	// (Enabled is then unknown, and false).
	Unreachable bool   `json:"unreachable,omitempty"`
	Cluster     string `json:"cluster,omitempty"`
	ClusterID   uint32 `json:"clusterID,omitempty"`
	// Remotes are the clusters configured for the agents (remote-clusters Secret).
	Remotes []string `json:"remotes"`
	// APIServer is the apiserver's report, nil when it has not published one.
	APIServer *meshstatus.APIServerReport `json:"apiserver"`
	Agents    []meshstatus.AgentReport    `json:"agents"`
	// Problems lists what keeps this cluster from being ready.
	Problems []string `json:"problems"`
	Ready    bool     `json:"ready"`
}

// CollectStatus reads the status of each cluster. Errors of one cluster are
// reported as its problems, not as a failure of the whole collection.
func CollectStatus(ctx context.Context, clusters []*Cluster) MeshStatus {
	st := MeshStatus{Version: StatusSchemaVersion, Clusters: []ClusterStatus{}}
	for _, c := range clusters {
		st.Clusters = append(st.Clusters, collectCluster(ctx, c))
	}
	st.Ready, st.Verdict = verdict(st.Clusters)
	return st
}

func collectCluster(ctx context.Context, c *Cluster) ClusterStatus {
	cs := ClusterStatus{Context: c.Context, Namespace: c.Namespace, Remotes: []string{}, Agents: []meshstatus.AgentReport{}, Problems: []string{}}
	info, err := c.ReadInfo(ctx)
	if err != nil {
		cs.Unreachable = errors.Is(err, ErrUnreachable)
		cs.Problems = append(cs.Problems, err.Error())
		return cs
	}
	cs.Enabled, cs.Cluster, cs.ClusterID = true, info.Name, info.ID
	s, err := c.Client.CoreV1().Secrets(c.Namespace).Get(ctx, secretRemoteClusters, metav1.GetOptions{})
	switch {
	case err == nil:
		for k := range s.Data {
			if !strings.Contains(k, ".") {
				cs.Remotes = append(cs.Remotes, k)
			}
		}
		slices.Sort(cs.Remotes)
	case !apierrors.IsNotFound(err):
		cs.Problems = append(cs.Problems, fmt.Sprintf("read remote clusters: %v", err))
	}
	reps, err := meshstatus.List(ctx, c.Client.CoreV1(), c.Namespace)
	if err != nil {
		cs.Problems = append(cs.Problems, err.Error())
		return cs
	}
	for _, inv := range reps.Invalid {
		cs.Problems = append(cs.Problems, "invalid status report "+inv)
	}
	for i := range reps.APIServers {
		if reps.APIServers[i].Cluster == info.Name || len(reps.APIServers) == 1 {
			cs.APIServer = &reps.APIServers[i]
		}
	}
	switch {
	case cs.APIServer == nil:
		cs.Problems = append(cs.Problems, "apiserver: no status reported yet")
	case !cs.APIServer.Ready:
		p := "apiserver: not ready"
		if cs.APIServer.LastError != "" {
			p += " (" + cs.APIServer.LastError + ")"
		}
		cs.Problems = append(cs.Problems, p)
	}
	cs.Problems = append(cs.Problems, cacheProblems(cs.APIServer, reps.Agents)...)
	cs.Agents = reps.Agents
	if len(cs.Agents) == 0 {
		cs.Problems = append(cs.Problems, "agents: no agent has reported yet")
	}
	for _, a := range cs.Agents {
		seen := map[string]bool{}
		for _, r := range a.Remotes {
			seen[r.Name] = true
			if r.Ready {
				continue
			}
			p := fmt.Sprintf("agent %s: remote %s %s", a.Node, r.Name, remoteState(r))
			if r.LastError != "" {
				p += " (" + r.LastError + ")"
			}
			cs.Problems = append(cs.Problems, p)
		}
		for _, want := range cs.Remotes {
			if !seen[want] {
				cs.Problems = append(cs.Problems, fmt.Sprintf("agent %s: remote %s not loaded yet", a.Node, want))
			}
		}
	}
	cs.Problems = append(cs.Problems, refusedPolicies(cs.Agents)...)
	cs.Ready = len(cs.Problems) == 0
	return cs
}

// refusedPolicies returns one problem per network policy the agents refused
// (every agent refuses the same policies: said once, with how many agents).
func refusedPolicies(agents []meshstatus.AgentReport) []string {
	type refusal struct {
		reason string
		agents int
	}
	by := map[string]*refusal{}
	var order []string
	for _, a := range agents {
		for _, r := range a.RefusedPolicies {
			if by[r.Policy] == nil {
				by[r.Policy] = &refusal{reason: r.Reason}
				order = append(order, r.Policy)
			}
			by[r.Policy].agents++
		}
	}
	out := make([]string, 0, len(order))
	for _, p := range order {
		out = append(out, fmt.Sprintf("policy %s refused by %d agent(s), not enforced: %s", p, by[p].agents, by[p].reason))
	}
	return out
}

func remoteState(r meshstatus.Remote) string {
	switch {
	case r.Ready:
		return "ready"
	case strings.HasPrefix(r.LastError, meshstatus.RefusedPrefix):
		return "refused"
	case r.WaitingForCanary:
		return "waiting for the sync canary of its emptied or replaced etcd"
	case r.Connected:
		return "syncing"
	default:
		return "disconnected"
	}
}

// cacheProblems lists the kvstoremesh mirrors of api that are not synced
// while an agent reads them (a mirror no agent reads is no problem).
func cacheProblems(api *meshstatus.APIServerReport, agents []meshstatus.AgentReport) []string {
	if api == nil {
		return nil
	}
	cached := map[string]bool{}
	for _, a := range agents {
		for _, r := range a.Remotes {
			cached[r.Name] = cached[r.Name] || r.Cached
		}
	}
	var out []string
	for _, r := range api.KVStoreMesh {
		if r.Synced || !cached[r.Name] {
			continue
		}
		p := fmt.Sprintf("kvstoremesh: remote %s %s", r.Name, cachedState(r))
		if r.LastError != "" {
			p += " (" + r.LastError + ")"
		}
		out = append(out, p)
	}
	return out
}

// cachedState says how the kvstoremesh mirrors remote r.
func cachedState(r meshstatus.CachedRemote) string {
	switch {
	case r.Synced:
		return "synced"
	case strings.HasPrefix(r.LastError, meshstatus.RefusedPrefix):
		return "refused"
	case r.WaitingForCanary:
		return "waiting for the sync canary of its emptied or replaced etcd, serving the last state"
	case r.Connected:
		return "syncing"
	case r.Served:
		return "disconnected, serving the last state"
	default:
		return "disconnected"
	}
}

func verdict(cs []ClusterStatus) (bool, string) {
	var problems, agents, direct, cached int
	for _, c := range cs {
		problems += len(c.Problems)
		agents += len(c.Agents)
		for _, a := range c.Agents {
			for _, r := range a.Remotes {
				if r.Cached {
					cached++
				} else {
					direct++
				}
			}
		}
	}
	if len(cs) == 0 {
		return false, "no cluster given"
	}
	if problems == 0 {
		return true, fmt.Sprintf("Mesh ready: %d clusters, %d agents, %s.", len(cs), agents, remoteViews(direct, cached))
	}
	first := ""
	for _, c := range cs {
		if len(c.Problems) > 0 {
			first = clusterLabel(c) + ": " + c.Problems[0]
			break
		}
	}
	more := ""
	if problems > 1 {
		more = fmt.Sprintf(" (and %d more)", problems-1)
	}
	return false, fmt.Sprintf("Mesh NOT ready: %s%s.", first, more)
}

// remoteViews says how the agents see their remote clusters: each agent has one
// view per remote, read either over its own connection to the remote's etcd or
// from its cluster's kvstoremesh cache.
func remoteViews(direct, cached int) string {
	switch {
	case cached == 0:
		return fmt.Sprintf("%d remote connections ready", direct)
	case direct == 0:
		return fmt.Sprintf("%d remote cluster views ready, read from the kvstoremesh cache", cached)
	default:
		return fmt.Sprintf("%d remote cluster views ready (%d over direct connections, %d from the kvstoremesh cache)", direct+cached, direct, cached)
	}
}

func clusterLabel(c ClusterStatus) string {
	if c.Cluster != "" {
		return c.Cluster
	}
	return c.Context
}
