package remotedata

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Mesh is the data of Clusters remote clusters of equal size (PerCluster's
// counts), with IDs FirstID, FirstID+1, ... and names "cluster-<ID>".
type Mesh struct {
	Clusters   int
	FirstID    uint32
	PerCluster Set
}

// CiliumScale is the data set of Cilium's clustermesh scale test: 250
// clusters, 25,000 nodes, 250,000 ipcache entries, 25,000 identities, and
// 2,500 services with 2 backends each (10 per cluster), remote IDs 2..251.
func CiliumScale(cached bool) Mesh {
	return Mesh{Clusters: 250, FirstID: 2, PerCluster: Set{Nodes: 100, IPs: 1000, Identities: 100, Services: 10, Cached: cached}}
}

// Sets returns the clusters' sets.
func (m Mesh) Sets() []Set {
	out := make([]Set, m.Clusters)
	for i := range out {
		s := m.PerCluster
		s.ID = m.FirstID + uint32(i)
		s.Cluster = fmt.Sprintf("cluster-%d", s.ID)
		out[i] = s
	}
	return out
}

// Entries is the number of entries of every cluster together.
func (m Mesh) Entries() int { return m.Clusters * m.PerCluster.Entries() }

// Write writes every cluster into etcd (one etcd: use Cached sets, or
// state sets of one cluster each per etcd), four clusters at a time.
func (m Mesh) Write(ctx context.Context, etcd *clientv3.Client) error {
	if m.Clusters > 1 && !m.PerCluster.Cached {
		return fmt.Errorf("write %d clusters into one etcd: %w", m.Clusters, ErrSharedState)
	}
	sets := make(chan Set)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for range 4 {
		wg.Go(func() {
			for s := range sets {
				if err := s.Write(ctx, etcd); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for _, s := range m.Sets() {
		sets <- s
	}
	close(sets)
	wg.Wait()
	return errors.Join(errs...)
}

// ErrSharedState: the state layout has one ipcache and identity prefix per
// etcd, so one etcd holds the state of one cluster only.
var ErrSharedState = errors.New("the state layout of several clusters cannot share one etcd")

// Change is one ipcache change of a Churn.
type Change struct {
	Seq      int
	Set      int // index in Churn.Sets
	Key      string
	IP       netip.Addr
	Identity uint32 // the new identity
	Sent     time.Time
}

// Churn changes the identity of existing ipcache entries of Sets, spread
// round-robin across the sets, at Rate changes per second (325/s in
// Cilium's scale test). Entry j of a set gets, at its r-th change,
// identity (j+r+1) mod n of the set's range, n = min(1000, Identities):
// every change is visible in the datapath.
type Churn struct {
	Sets []Set
	Rate float64
}

// At returns change seq (Sent unset).
func (c Churn) At(seq int) (Change, error) {
	si := seq % len(c.Sets)
	s := c.Sets[si]
	if s.IPs == 0 {
		return Change{}, fmt.Errorf("churn cluster %s: no ipcache entries", s.Cluster)
	}
	n := seq / len(c.Sets)
	j, round := n%s.IPs, n/s.IPs
	ip := s.IP(j)
	return Change{Seq: seq, Set: si, Key: s.IPKey(ip), IP: ip, Identity: s.Identity((j + round + 1) % max(1, min(1000, s.Identities)))}, nil
}

// Run issues n changes (until ctx is done when n is 0) paced at Rate
// (change seq is due at seq/Rate after the start),
// with up to 32 puts in flight, calls sent with each change just before
// its put, and returns how many were put.
func (c Churn) Run(ctx context.Context, etcd *clientv3.Client, n int, sent func(Change)) (int, error) {
	if len(c.Sets) == 0 || c.Rate <= 0 {
		return 0, fmt.Errorf("churn: %d sets at %v/s: %w", len(c.Sets), c.Rate, ErrChurnConfig)
	}
	interval := time.Duration(float64(time.Second) / c.Rate)
	start := time.Now()
	inflight := make(chan struct{}, 32)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	done := 0
	for seq := 0; n == 0 || seq < n; seq++ {
		// Paced by the schedule, not by a ticker: a late change does not
		// delay the following ones.
		if wait := time.Until(start.Add(time.Duration(seq) * interval)); wait > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
		}
		if ctx.Err() != nil {
			wg.Wait()
			return done, errors.Join(errs...)
		}
		ch, err := c.At(seq)
		if err != nil {
			wg.Wait()
			return done, err
		}
		s := c.Sets[ch.Set]
		i := seq / len(c.Sets) % s.IPs
		v, err := s.IPCacheValueWith(i, ch.IP, ch.Identity)
		if err != nil {
			wg.Wait()
			return done, err
		}
		inflight <- struct{}{}
		ch.Sent = time.Now()
		if sent != nil {
			sent(ch)
		}
		wg.Go(func() {
			defer func() { <-inflight }()
			_, err := etcd.Put(ctx, ch.Key, v)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && ctx.Err() == nil {
				errs = append(errs, fmt.Errorf("churn put %q: %w", ch.Key, err))
			} else if err == nil {
				done++
			}
		})
	}
	wg.Wait()
	return done, errors.Join(errs...)
}

// ErrChurnConfig: a Churn without sets or rate.
var ErrChurnConfig = errors.New("invalid churn")
