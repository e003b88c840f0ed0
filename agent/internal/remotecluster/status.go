package remotecluster

import "time"

// Status is the state of one remote cluster.
type Status struct {
	Name string
	ID   uint32
	// Connected: a session runs and the last probe reached the etcd.
	Connected bool
	// Ready: every kind has been listed in the current session, and none
	// waits for the sync canary of an emptied or replaced etcd.
	Ready bool
	// WaitingForCanary: a kind waits for the remote's sync canary (its etcd
	// was emptied or replaced); the previous state is served meanwhile.
	WaitingForCanary bool
	// Served: the remote was ready at least once since the agent started
	// and its state has not been withdrawn since, so the datapath holds
	// its last-known state even while it is unreachable.
	Served bool
	Kinds  []KindStatus
	// Failures counts failed connection attempts and lost connectivity;
	// Reconnects counts new sessions and regained connectivity.
	Failures, Reconnects uint64
	// LastError is the error of the current outage or failed attempt; it
	// is cleared when the remote is reachable and synced again.
	LastError  string
	LastChange time.Time
	// RefusedReason says why the remote is refused (cluster ID conflict,
	// unusable cluster config), empty when it is not.
	RefusedReason string
	// Cached: the remote is read through a kvstoremesh cache (its cluster
	// config says cached), not from its own etcd.
	Cached bool
	// LastHeartbeat is the remote's cilium/.heartbeat timestamp.
	LastHeartbeat time.Time
	// ProgrammedAt is when the datapath flush that holds the current
	// session's full state (every kind listed) returned: synced and
	// programmed; zero until then. SyncTook is the time from the session's
	// start (connected, cluster config read) to ProgrammedAt.
	ProgrammedAt time.Time
	SyncTook     time.Duration
	// PodCIDROverlap says which of the remote's node pod CIDRs overlap the
	// local cluster's pod CIDRs (refused: not programmed), empty when none.
	PodCIDROverlap string
	// Refused counts, by reason, the remote's tunnel and ipcache claims
	// that the trust rules keep out of the datapath (DESIGN §8).
	Refused []RefusedClaims
	// Conflicts are the prefixes this remote claims together with another
	// remote: withdrawn for both (at most MaxConflictsShown, by prefix).
	Conflicts []Conflict
}

// MaxConflictsShown bounds Status.Conflicts and RefusedClaims.Examples;
// the counts are complete.
const MaxConflictsShown = 20

// RefusedClaims counts a remote's refused claims of one reason.
type RefusedClaims struct {
	Reason string
	Count  uint64
	// Examples are the first refused prefixes ("tunnel 0.0.0.0/0").
	Examples []string
}

// Conflict is a prefix that several remotes claim.
type Conflict struct {
	Kind      string // tunnel or ipcache
	Prefix    string
	Claimants []string // cluster names, sorted by cluster ID
}

// Settled reports whether the remote no longer holds the agent's
// readiness back: ready, or served (its last-known state is programmed),
// or refused for a reason no retry can mend. A remote that has never been
// reached since the agent started, whatever the failure (unreachable, TLS,
// access denied, a timeout), is not settled.
func (s Status) Settled() bool { return s.Ready || s.Served || s.RefusedReason != "" }

// KindStatus is the state of one kind (nodes, identities, ipcache,
// services) of a remote.
type KindStatus struct {
	Kind   string
	Synced bool
	// WaitingForCanary: the kind waits for the remote's sync canary before
	// it (re)lists; its entries stay meanwhile.
	WaitingForCanary         bool
	Entries, Invalid, Events uint64
	LastEvent                time.Time
}

// LastEvent returns the time of the latest event of any kind.
func (s Status) LastEvent() time.Time {
	var t time.Time
	for _, k := range s.Kinds {
		if k.LastEvent.After(t) {
			t = k.LastEvent
		}
	}
	return t
}
