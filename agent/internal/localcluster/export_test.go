package localcluster

import dto "github.com/prometheus/client_model/go"

func testutilCount(w *Watcher) float64 {
	var m dto.Metric
	if err := w.warns.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}
