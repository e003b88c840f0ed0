package etcdserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
)

// StartCluster starts n members that form one etcd cluster, sharing base's
// CA (generated under base.CertDir if base names none). Member i is named
// <base.Name>-<i> with data dir <base.DataDir>/<name>; its ports are free
// ports. Members start concurrently because each waits for a quorum.
func StartCluster(ctx context.Context, base Config, n int, log *slog.Logger) ([]*Server, error) {
	if n < 1 {
		return nil, fmt.Errorf("%w: %d members", ErrConfig, n)
	}
	if base.DataDir == "" {
		return nil, fmt.Errorf("%w: no data dir", ErrConfig)
	}
	if base.Name == "" {
		base.Name = "etcd"
	}
	if base.CertDir == "" {
		base.CertDir = filepath.Clean(base.DataDir) + "-pki"
	}
	if base.InitialClusterToken == "" {
		base.InitialClusterToken = newClusterToken(base.ClusterName) // one for every member
	}
	// One CA for every member: generate it once through the first config.
	first := base
	first.Name, first.DataDir = base.Name+"-0", filepath.Join(base.DataDir, base.Name+"-0")
	first.InitialCluster = "placeholder=https://127.0.0.1:1"
	probe, err := first.withDefaults()
	if err != nil {
		return nil, err
	}
	ps := &Server{cfg: probe, log: log}
	if err := ps.ensureCerts(); err != nil {
		return nil, err
	}
	if base.CAFile == "" {
		base.CAFile, base.CAKeyFile = ps.caFile, filepath.Join(base.CertDir, "ca.key")
	}
	cfgs := make([]Config, n)
	names := make([]string, n)
	peers := make([]string, n)
	for i := range cfgs {
		c := base
		c.Name = fmt.Sprintf("%s-%d", base.Name, i)
		c.DataDir = filepath.Join(base.DataDir, c.Name)
		c.InitialCluster = "placeholder=https://127.0.0.1:1" // set below
		if c, err = c.withDefaults(); err != nil {
			return nil, err
		}
		cfgs[i], names[i], peers[i] = c, c.Name, c.PeerURL
	}
	ic := initialCluster(names, peers)
	servers := make([]*Server, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range cfgs {
		cfgs[i].InitialCluster = ic
		cfgs[i].DisableAuth = true // enabled once below, for the whole cluster
		wg.Go(func() {
			servers[i], errs[i] = Start(ctx, cfgs[i], log)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, s := range servers {
			if s != nil {
				s.Stop()
			}
		}
		return nil, err
	}
	if !base.DisableAuth {
		for _, s := range servers {
			s.cfg.DisableAuth = false
		}
		if err := servers[0].setupAuth(ctx); err != nil {
			for _, s := range servers {
				s.Stop()
			}
			return nil, err
		}
	}
	return servers, nil
}
