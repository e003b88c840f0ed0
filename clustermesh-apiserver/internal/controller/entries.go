package controller

import (
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Writer is the write side of one kvstore prefix.
type Writer interface {
	Upsert(key string, value []byte)
	Delete(key string)
}

// NewEntriesGauge returns the clustermesh_apiserver_entries gauge of one kind,
// registered on reg when reg is not nil.
func NewEntriesGauge(kind string, reg prometheus.Registerer) (prometheus.Gauge, error) {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "clustermesh_apiserver", Name: "entries", ConstLabels: prometheus.Labels{"kind": kind},
		Help: "Entries published in the kvstore, per kind.",
	})
	if reg != nil {
		if err := reg.Register(g); err != nil {
			return nil, fmt.Errorf("register %s entries gauge: %w", kind, err)
		}
	}
	return g, nil
}

// Entries remembers which objects have an entry in the kvstore, so that a
// withdrawal writes a delete only for what was published, and keeps the
// entries gauge of its kind equal to their number. One object has one entry.
type Entries struct {
	store Writer
	gauge prometheus.Gauge

	mu   sync.Mutex
	keys map[string]bool // object keys with an entry in store; guarded by mu
}

// NewEntries returns an empty set writing through store.
func NewEntries(kind string, store Writer, reg prometheus.Registerer) (*Entries, error) {
	g, err := NewEntriesGauge(kind, reg)
	if err != nil {
		return nil, err
	}
	return &Entries{store: store, gauge: g, keys: map[string]bool{}}, nil
}

// Upsert writes the entry of object obj at key.
func (e *Entries) Upsert(obj, key string, value []byte) {
	e.store.Upsert(key, value)
	e.mu.Lock()
	e.keys[obj] = true
	e.gauge.Set(float64(len(e.keys)))
	e.mu.Unlock()
}

// Withdraw deletes the entry of object obj at key, if one was published.
func (e *Entries) Withdraw(obj, key string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.keys[obj] {
		delete(e.keys, obj)
		e.store.Delete(key)
		e.gauge.Set(float64(len(e.keys)))
	}
}
