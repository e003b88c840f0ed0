package kvstoremesh

import (
	"time"

	"github.com/clustermesh/clustermesh/kvstore/remoteconn"
)

// Status is the state of the mirror of one remote cluster.
type Status struct {
	Name string
	ID   uint32
	// Health: connected, failures, reconnects, last error and change.
	remoteconn.Health
	// Synced: connected, every kind of the current session is listed and
	// its cache canary written, and the cluster config copy is written.
	Synced bool
	// Served: the cache holds the remote's last-known state (it was synced
	// at least once and has not been withdrawn since), also while the
	// remote is unreachable.
	Served        bool
	Kinds         []KindStatus
	RefusedReason string
	LastHeartbeat time.Time
}

// KindStatus is the state of the mirror of one kind.
type KindStatus struct {
	Kind string
	// Synced: listed in the current session and the cache canary written.
	Synced bool
	// WaitingForCanary: the remote's canary is missing (its etcd was
	// emptied or replaced); the cache keeps the previous state meanwhile.
	WaitingForCanary bool
	// CanaryWritten: the cache canary of this kind has been written.
	CanaryWritten    bool
	Entries, Invalid uint64
	LastEvent        time.Time
	// WriteError is the last failed write to the local etcd while one is
	// still failing.
	WriteError string
}
