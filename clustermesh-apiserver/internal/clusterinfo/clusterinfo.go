package clusterinfo

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// DefaultHeartbeatInterval is how often the heartbeat is rewritten.
const DefaultHeartbeatInterval = time.Minute

// Store is the write side of one key.
type Store interface {
	Upsert(key string, value []byte)
	MarkSynced()
}

// Config describes the cluster.
type Config struct {
	Cluster              string
	ClusterID            uint32
	MaxConnectedClusters int
	HeartbeatInterval    time.Duration
}

// Value returns the cluster config published for cfg.
func Value(cfg Config) wire.ClusterConfig {
	no := false
	return wire.ClusterConfig{
		ID: cfg.ClusterID,
		Capabilities: wire.Capabilities{
			SyncedCanaries:        true,
			MaxConnectedClusters:  uint32(cfg.MaxConnectedClusters),
			ServiceExportsEnabled: &no,
		},
	}
}

// Publisher writes the cluster config once and the heartbeat every interval.
type Publisher struct {
	cfg       Config
	config    Store
	heartbeat Store
	value     []byte
	clock     clock.WithTicker
	log       *slog.Logger
}

// New validates cfg and returns a publisher writing through the two stores.
func New(cfg Config, config, heartbeat Store, clk clock.WithTicker, log *slog.Logger) (*Publisher, error) {
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if err := wire.ValidateCluster(cfg.Cluster, cfg.ClusterID, cfg.MaxConnectedClusters); err != nil {
		return nil, err
	}
	v, err := wire.MarshalClusterConfig(Value(cfg))
	if err != nil {
		return nil, fmt.Errorf("cluster config: %w", err)
	}
	return &Publisher{cfg: cfg, config: config, heartbeat: heartbeat, value: v, clock: clk, log: log}, nil
}

// Run writes the cluster config, then the heartbeat every interval until ctx is done.
func (p *Publisher) Run(ctx context.Context) error {
	p.config.Upsert(wire.ClusterConfigKey(p.cfg.Cluster), p.value)
	p.config.MarkSynced()
	p.heartbeat.Upsert(wire.HeartbeatKey, wire.FormatTimestamp(p.clock.Now()))
	p.heartbeat.MarkSynced()
	t := p.clock.NewTicker(p.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C():
			p.heartbeat.Upsert(wire.HeartbeatKey, wire.FormatTimestamp(now))
		}
	}
}
