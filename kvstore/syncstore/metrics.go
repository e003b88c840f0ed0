package syncstore

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	queueDepth prometheus.Gauge
	writes     *prometheus.CounterVec // by op: upsert, delete, canary
	repairs    *prometheus.CounterVec // by reason: modified, deleted, lease-lost, stale
	errors     prometheus.Counter
	latency    prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, store string) (*metrics, error) {
	labels := prometheus.Labels{"store": store}
	m := &metrics{
		queueDepth: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "clustermesh", Subsystem: "kvstore_sync", Name: "queue_depth",
			Help: "Keys waiting to be written or deleted.", ConstLabels: labels,
		}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "clustermesh", Subsystem: "kvstore_sync", Name: "writes_total",
			Help: "Successful etcd writes, by operation.", ConstLabels: labels,
		}, []string{"op"}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "clustermesh", Subsystem: "kvstore_sync", Name: "repairs_total",
			Help: "Keys re-written or removed because etcd differed from the desired state, by reason.", ConstLabels: labels,
		}, []string{"reason"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "clustermesh", Subsystem: "kvstore_sync", Name: "errors_total",
			Help: "Failed etcd writes (each is retried).", ConstLabels: labels,
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "clustermesh", Subsystem: "kvstore_sync", Name: "write_duration_seconds",
			Help: "Latency of etcd writes.", ConstLabels: labels,
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}),
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	m.queueDepth = register(reg, m.queueDepth, &errs)
	m.writes = register(reg, m.writes, &errs)
	m.repairs = register(reg, m.repairs, &errs)
	m.errors = register(reg, m.errors, &errs)
	m.latency = register(reg, m.latency, &errs)
	return m, errors.Join(errs...)
}

// register registers c, or returns the collector already registered under
// the same description (a store recreated with the same name).
func register[C prometheus.Collector](reg prometheus.Registerer, c C, errs *[]error) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		*errs = append(*errs, err)
	}
	return c
}
