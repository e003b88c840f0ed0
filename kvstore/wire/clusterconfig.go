package wire

import (
	"encoding/json"
	"fmt"
)

// ClusterConfig is a cluster's configuration, at ClusterConfigKey(name),
// leased and re-asserted by its clustermesh-apiserver. JSON keys and
// omitempty choices are those of Cilium's CiliumClusterConfig:
//
//	{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255,"serviceExportsEnabled":false}}
//
// (cached is omitted when false; serviceExportsEnabled is omitted when nil,
// meaning "not supported").
//
// WARNING - STABLE WIRE API.
type ClusterConfig struct {
	ID           uint32       `json:"id,omitempty"`
	Capabilities Capabilities `json:"capabilities"`
}

// Capabilities of a cluster's kvstore.
type Capabilities struct {
	// SyncedCanaries: the cluster writes one sync canary per prefix.
	SyncedCanaries bool `json:"syncedCanaries,omitempty"`
	// Cached: the data is a kvstoremesh copy under cilium/cache/.
	Cached bool `json:"cached,omitempty"`
	// MaxConnectedClusters is 255 or 511; 0 (absent) means 255.
	MaxConnectedClusters uint32 `json:"maxConnectedClusters,omitempty"`
	// ServiceExportsEnabled: MCS-API ServiceExports are enabled; nil means
	// the cluster does not support them.
	ServiceExportsEnabled *bool `json:"serviceExportsEnabled,omitempty"`
}

// MaxConnected returns MaxConnectedClusters with the 0 → 255 default applied.
func (c *ClusterConfig) MaxConnected() int {
	if c.Capabilities.MaxConnectedClusters == 0 {
		return DefaultMaxConnectedClusters
	}
	return int(c.Capabilities.MaxConnectedClusters)
}

// Validate checks c on its own: maxConnectedClusters 255 or 511 (or
// absent), cluster ID in 1..maxConnectedClusters. Errors wrap ErrInvalid and
// the specific sentinel.
func (c *ClusterConfig) Validate() error {
	if m := c.Capabilities.MaxConnectedClusters; m != 0 {
		if err := ValidateMaxConnectedClusters(int(m)); err != nil {
			return fmt.Errorf("cluster config: %w: %w", ErrInvalid, err)
		}
	}
	if err := ValidateClusterID(c.ID, c.MaxConnected()); err != nil {
		return fmt.Errorf("cluster config: %w: %w", ErrInvalid, err)
	}
	return nil
}

// Compatible checks a validated remote config against the local cluster:
// the same maxConnectedClusters on both sides (DESIGN §3), and an ID that is
// not the local cluster's own. Uniqueness among connected remotes is the
// caller's to check.
func (c *ClusterConfig) Compatible(localID uint32, localMaxConnected int) error {
	if c.MaxConnected() != localMaxConnected {
		return fmt.Errorf("cluster config: %w: remote %d, local %d", ErrMaxConnectedClustersMismatch, c.MaxConnected(), localMaxConnected)
	}
	if c.ID == localID {
		return fmt.Errorf("cluster config: %w: remote uses the local cluster ID %d", ErrInvalidClusterID, c.ID)
	}
	return nil
}

// MarshalClusterConfig encodes c as Cilium does, after checking it with
// Validate.
func MarshalClusterConfig(c ClusterConfig) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(&c)
}

// DecodeClusterConfig decodes and validates a ClusterConfig value. A
// missing config or one with ID 0 (which older Cilium tolerated) is refused.
func DecodeClusterConfig(value []byte) (ClusterConfig, error) {
	if len(value) > MaxValueSize {
		return ClusterConfig{}, fmt.Errorf("cluster config: %w: %d bytes", ErrTooLarge, len(value))
	}
	var c ClusterConfig
	if err := json.Unmarshal(value, &c); err != nil {
		return ClusterConfig{}, fmt.Errorf("cluster config: %w: %v", ErrMalformed, err)
	}
	if err := c.Validate(); err != nil {
		return ClusterConfig{}, err
	}
	return c, nil
}
