package watchstore

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/kvstore"
)

// Metrics are the collectors of all watch stores of a process, labelled by
// store name and cluster. A nil *Metrics records nothing.
type Metrics struct {
	Entries   *prometheus.GaugeVec   // store, cluster
	Invalid   *prometheus.CounterVec // store, cluster
	Events    *prometheus.CounterVec // store, cluster, kind (upsert, delete, list-done)
	Synced    *prometheus.GaugeVec   // store, cluster: 1 once the initial listing is complete
	LastEvent *prometheus.GaugeVec   // store, cluster: unix time of the last event
}

// NewMetrics creates the collectors and registers them on reg (nil: not
// registered).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	labels := []string{"store", "cluster"}
	m := &Metrics{
		Entries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "clustermesh", Subsystem: "kvstore_watch", Name: "entries",
			Help: "Valid entries held.",
		}, labels),
		Invalid: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "clustermesh", Subsystem: "kvstore_watch", Name: "invalid_total",
			Help: "Values that failed decoding or validation and were skipped.",
		}, labels),
		Events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "clustermesh", Subsystem: "kvstore_watch", Name: "events_total",
			Help: "Events received, by kind.",
		}, append(labels, "kind")),
		Synced: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "clustermesh", Subsystem: "kvstore_watch", Name: "synced",
			Help: "1 once the initial listing (after the sync canary) is complete.",
		}, labels),
		LastEvent: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "clustermesh", Subsystem: "kvstore_watch", Name: "last_event_timestamp_seconds",
			Help: "Unix time of the last event.",
		}, labels),
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.Entries, m.Invalid, m.Events, m.Synced, m.LastEvent} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	return m, errors.Join(errs...)
}

// storeMetrics are one store's series of Metrics, looked up once: by its
// labels every event would take three look-ups (≈ 60 ns each warm, 0.2 µs
// of the ≈ 3 µs an event costs the agent).
type storeMetrics struct {
	events                     [kvstore.EventListDone + 1]prometheus.Counter // by kind
	entries, synced, lastEvent prometheus.Gauge
	invalid                    prometheus.Counter
}

// of returns the series of the store name of cluster; nil for a nil m.
func (m *Metrics) of(name, cluster string) *storeMetrics {
	if m == nil {
		return nil
	}
	sm := &storeMetrics{
		entries:   m.Entries.WithLabelValues(name, cluster),
		synced:    m.Synced.WithLabelValues(name, cluster),
		lastEvent: m.LastEvent.WithLabelValues(name, cluster),
		invalid:   m.Invalid.WithLabelValues(name, cluster),
	}
	for k := range sm.events {
		sm.events[k] = m.Events.WithLabelValues(name, cluster, kvstore.EventKind(k).String())
	}
	return sm
}

// event counts an event of kind k.
func (sm *storeMetrics) event(k kvstore.EventKind) {
	if int(k) < len(sm.events) {
		sm.events[k].Inc()
	}
}
