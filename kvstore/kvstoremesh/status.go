package kvstoremesh

import "time"

// Status is the state of the mirror of one remote cluster.
type Status struct {
	Name string
	ID   uint32
	// Connected: a session runs and the last probe reached the etcd.
	Connected bool
	// Synced: connected, every kind of the current session is listed and
	// its cache canary written.
	Synced bool
	// Served: the cache holds the remote's last-known state (it was synced
	// at least once and has not been withdrawn since), also while the
	// remote is unreachable.
	Served bool
	Kinds  []KindStatus
	// Failures counts failed attempts and lost connectivity, Reconnects
	// new sessions and regained connectivity.
	Failures, Reconnects uint64
	// LastError is the error of the current outage or failed attempt.
	LastError     string
	LastChange    time.Time
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
