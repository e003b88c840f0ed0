package remotecluster

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics exported per remote cluster, computed from Status at scrape time
// (so a removed remote's series disappear with it).
var (
	descReady = prometheus.NewDesc("clustermesh_agent_remote_cluster_ready",
		"1 when every kind of the remote cluster is synced in the current session.", []string{"cluster"}, nil)
	descConnected = prometheus.NewDesc("clustermesh_agent_remote_cluster_connected",
		"1 when the remote cluster's etcd answered the last probe.", []string{"cluster"}, nil)
	descEntries = prometheus.NewDesc("clustermesh_agent_remote_entries",
		"Valid entries held per remote cluster and kind.", []string{"cluster", "kind"}, nil)
	descEvents = prometheus.NewDesc("clustermesh_agent_remote_events_total",
		"Events received per remote cluster and kind.", []string{"cluster", "kind"}, nil)
	descInvalid = prometheus.NewDesc("clustermesh_agent_remote_invalid_entries_total",
		"Entries dropped by validation per remote cluster and kind.", []string{"cluster", "kind"}, nil)
	descReconnects = prometheus.NewDesc("clustermesh_agent_remote_reconnects_total",
		"New sessions and regained connectivity per remote cluster.", []string{"cluster"}, nil)
	descFailures = prometheus.NewDesc("clustermesh_agent_remote_failures_total",
		"Failed connection attempts and lost connectivity per remote cluster.", []string{"cluster"}, nil)
	descHeartbeatLag = prometheus.NewDesc("clustermesh_agent_remote_heartbeat_lag_seconds",
		"Now minus the remote cluster's last heartbeat timestamp (rewritten every minute by its apiserver).", []string{"cluster"}, nil)
	descEventLag = prometheus.NewDesc("clustermesh_agent_remote_last_event_age_seconds",
		"Now minus the time the last event of the remote cluster was received.", []string{"cluster"}, nil)
	descRefused = prometheus.NewDesc("clustermesh_agent_remote_refused_claims",
		"Tunnel and ipcache claims of the remote cluster kept out of the datapath by the trust rules, per reason (conflicts with another remote included).", []string{"cluster", "reason"}, nil)
)

type collector struct {
	status func() []Status
	now    func() time.Time
}

// Collector returns a prometheus.Collector of the per-remote metrics.
func (m *Manager) Collector() prometheus.Collector {
	return collector{status: m.Status, now: m.clock.Now}
}

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReady, descConnected, descEntries, descEvents, descInvalid,
		descReconnects, descFailures, descHeartbeatLag, descEventLag, descRefused} {
		ch <- d
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	now := c.now()
	for _, s := range c.status() {
		ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, b2f(s.Ready), s.Name)
		ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, b2f(s.Connected), s.Name)
		ch <- prometheus.MustNewConstMetric(descReconnects, prometheus.CounterValue, float64(s.Reconnects), s.Name)
		ch <- prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, float64(s.Failures), s.Name)
		for _, k := range s.Kinds {
			ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(k.Entries), s.Name, k.Kind)
			ch <- prometheus.MustNewConstMetric(descEvents, prometheus.CounterValue, float64(k.Events), s.Name, k.Kind)
			ch <- prometheus.MustNewConstMetric(descInvalid, prometheus.CounterValue, float64(k.Invalid), s.Name, k.Kind)
		}
		for _, r := range s.Refused {
			ch <- prometheus.MustNewConstMetric(descRefused, prometheus.GaugeValue, float64(r.Count), s.Name, r.Reason)
		}
		if !s.LastHeartbeat.IsZero() {
			ch <- prometheus.MustNewConstMetric(descHeartbeatLag, prometheus.GaugeValue, seconds(now.Sub(s.LastHeartbeat)), s.Name)
		}
		if t := s.LastEvent(); !t.IsZero() {
			ch <- prometheus.MustNewConstMetric(descEventLag, prometheus.GaugeValue, seconds(now.Sub(t)), s.Name)
		}
	}
}

func seconds(d time.Duration) float64 { return d.Seconds() }
