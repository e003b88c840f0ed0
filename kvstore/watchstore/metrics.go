package watchstore

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
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
