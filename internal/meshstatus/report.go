package meshstatus

import "time"

// SchemaVersion is written into every report; readers ignore reports with a
// higher major version than they know.
const SchemaVersion = 1

// Kinds of synced prefixes and counted entries, as used in Synced and
// Entries maps.
const (
	KindNodes      = "nodes"
	KindServices   = "services"
	KindIdentities = "identities"
	KindIPCache    = "ip"
)

// RefusedPrefix starts a Remote's LastError when the agent refuses the
// remote (cluster ID conflict, unusable config).
const RefusedPrefix = "refused: "

// Remote is an agent's view of one remote cluster.
type Remote struct {
	// Name is the remote cluster's name (its config file name).
	Name string `json:"name"`
	// ClusterID is the ID read from the remote's cluster config, 0 until known.
	ClusterID uint32 `json:"clusterID"`
	// Connected is true while the etcd connection is up.
	Connected bool `json:"connected"`
	// Ready is true once every watched prefix has synced and the cluster
	// config was accepted.
	Ready bool `json:"ready"`
	// Synced says, per kind, whether the initial listing has completed.
	Synced map[string]bool `json:"synced,omitempty"`
	// Entries counts, per kind, the valid entries held from this remote.
	Entries map[string]int `json:"entries,omitempty"`
	// Invalid counts entries dropped because they failed validation.
	Invalid int `json:"invalid"`
	// Reconnects counts connection attempts after the first.
	Reconnects int `json:"reconnects"`
	// LastError is the last error seen, empty when none; RefusedPrefix
	// followed by the reason when the agent refuses the remote.
	LastError string `json:"lastError,omitempty"`
	// WaitingForCanary: the agent waits for the sync canary of the remote's
	// emptied or replaced etcd and serves the previous state meanwhile.
	WaitingForCanary bool `json:"waitingForCanary,omitempty"`
	// Cached: the agent reads the remote through the kvstoremesh cache of
	// its own cluster's etcd.
	Cached bool `json:"cached,omitempty"`
	// LastChange is when Connected or Ready last changed.
	LastChange time.Time `json:"lastChange,omitzero"`
	// ProgrammedAt is when the agent's datapath flush holding the current
	// session's full state of the remote returned; SyncSeconds is the
	// time from the session's start to then. Zero until programmed.
	ProgrammedAt time.Time `json:"programmedAt,omitzero"`
	SyncSeconds  float64   `json:"syncSeconds,omitempty"`
	// Refused counts, by reason, the remote's tunnel and ipcache claims
	// that the agent's trust rules keep out of the datapath.
	Refused map[string]int `json:"refused,omitempty"`
	// Conflicts are prefixes the remote claims together with another
	// remote, withdrawn for both (the first few).
	Conflicts []Conflict `json:"conflicts,omitempty"`
}

// Conflict is a prefix several remotes claim.
type Conflict struct {
	Kind      string   `json:"kind"`
	Prefix    string   `json:"prefix"`
	Claimants []string `json:"claimants"`
}

// AgentReport is what the agent on one node publishes.
type AgentReport struct {
	Version int    `json:"version"`
	Cluster string `json:"cluster"`
	Node    string `json:"node"`
	// Remotes is sorted by name by Publish.
	Remotes []Remote `json:"remotes"`
	// RefusedPolicies are the network policies the agent refused as a
	// whole (not enforced), with the reason.
	RefusedPolicies []PolicyRefusal `json:"refusedPolicies,omitempty"`
	// WorldIngress says whether the agent's pods' ingress policy decides
	// world on the host's path (beside a primary CNI only with
	// --cluster-cidrs), in one sentence.
	WorldIngress string `json:"worldIngress,omitempty"`
}

// PolicyRefusal is a refused network policy ("cnp/<ns>/<name>",
// "ccnp/<name>", "knp/<ns>/<name>") and why.
type PolicyRefusal struct {
	Policy string `json:"policy"`
	Reason string `json:"reason"`
}

// APIServerReport is what a cluster's clustermesh-apiserver publishes.
type APIServerReport struct {
	Version   int    `json:"version"`
	Cluster   string `json:"cluster"`
	ClusterID uint32 `json:"clusterID"`
	// Ready is true once every kind has been written and synced to etcd.
	Ready bool `json:"ready"`
	// Synced says, per kind, whether the sync canary has been written.
	Synced map[string]bool `json:"synced,omitempty"`
	// Entries counts, per kind, the keys the apiserver maintains in etcd.
	Entries map[string]int `json:"entries,omitempty"`
	// Identities is the number of allocated security identities.
	Identities int `json:"identities"`
	// LastError is the last error seen, empty when none; RefusedPrefix
	// followed by the reason when the agent refuses the remote.
	LastError string `json:"lastError,omitempty"`
	// KVStoreMesh is the apiserver's mirror of each remote cluster into
	// this cluster's etcd, sorted by name; nil when kvstoremesh is off.
	KVStoreMesh []CachedRemote `json:"kvstoremesh,omitempty"`
}

// CachedRemote is the kvstoremesh mirror of one remote cluster.
type CachedRemote struct {
	Name      string `json:"name"`
	ClusterID uint32 `json:"clusterID"`
	// Connected is true while the remote's etcd is reachable.
	Connected bool `json:"connected"`
	// Synced is true while connected and every kind is mirrored with its
	// cache canary written.
	Synced bool `json:"synced"`
	// Served is true while the cache holds the remote's last-known state,
	// also when the remote is unreachable.
	Served bool `json:"served"`
	// Entries counts, per kind, the entries mirrored.
	Entries map[string]int `json:"entries,omitempty"`
	// Invalid counts the remote's values not mirrored because they failed
	// validation.
	Invalid int `json:"invalid"`
	// WaitingForCanary: the remote's etcd was emptied or replaced; the
	// cache keeps the previous state until its canaries are back.
	WaitingForCanary bool `json:"waitingForCanary,omitempty"`
	// LastError is the last error seen, empty when none; RefusedPrefix
	// followed by the reason when the remote is refused.
	LastError string `json:"lastError,omitempty"`
}

// Report is an AgentReport or an APIServerReport.
type Report interface {
	objectName() string
	component() string
	prepare()
}

func (r *AgentReport) objectName() string { return objectName(ComponentAgent, r.Node) }
func (r *AgentReport) component() string  { return ComponentAgent }
func (r *AgentReport) prepare() {
	r.Version = SchemaVersion
	if r.Remotes == nil {
		r.Remotes = []Remote{}
	}
	sortRemotes(r.Remotes)
}

func (r *APIServerReport) objectName() string { return objectName(ComponentAPIServer, "") }
func (r *APIServerReport) component() string  { return ComponentAPIServer }
func (r *APIServerReport) prepare()           { r.Version = SchemaVersion }

// RemoteReady reports whether every remote of the agent is ready.
func (r *AgentReport) RemoteReady() bool {
	for _, rm := range r.Remotes {
		if !rm.Ready {
			return false
		}
	}
	return true
}
