//go:build e2e

package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/e2e/harness"
)

// TestPodToPodAcrossClusters: TCP (HTTP), UDP and ICMP from every pod to a
// pod in every other cluster, with real sockets inside the pods' namespaces.
func TestPodToPodAcrossClusters(t *testing.T) { podToPod(t, mesh(t)) }

func podToPod(t *testing.T, m *harness.Mesh) {
	for _, src := range m.Clusters {
		for _, dst := range m.Clusters {
			if src == dst {
				continue
			}
			for _, from := range src.Pods() {
				for _, to := range dst.Pods() {
					name := fmt.Sprintf("%s/%s→%s/%s", src.Name, from.Name, dst.Name, to.Name)
					// The first packets may race the last ipcache entries.
					err := eventually(30*time.Second, func() error {
						s, err := from.HTTP(to.HTTPAddr(), 2*time.Second)
						if err == nil && (s.Cluster != dst.Name || s.Pod != to.Name) {
							err = fmt.Errorf("answered by %v", s)
						}
						return err
					})
					if err != nil {
						t.Errorf("%s tcp: %v", name, err)
						continue
					}
					s, err := from.UDP(to.UDPAddr(), 2*time.Second)
					if err == nil && (s.Cluster != dst.Name || s.Pod != to.Name) {
						err = fmt.Errorf("answered by %v", s)
					}
					if err != nil {
						t.Errorf("%s udp: %v", name, err)
					}
					if err := from.Ping(to.IP, 2*time.Second); err != nil {
						t.Errorf("%s icmp: %v", name, err)
					}
				}
			}
		}
	}
}
