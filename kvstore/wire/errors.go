package wire

import "errors"

// Sentinel errors returned (wrapped) by the decoders and validators. A reader
// drops the value, counts it by sentinel, and carries on with the next one.
var (
	// ErrMalformed: the value is not valid JSON or does not fit the type.
	ErrMalformed = errors.New("malformed value")
	// ErrTooLarge: the value exceeds the size limit of its kind.
	ErrTooLarge = errors.New("value too large")
	// ErrKeyMismatch: the key is not a key of the expected kind, or names
	// another object (IP, namespace/name, node, identity) than the value.
	ErrKeyMismatch = errors.New("key does not match value")
	// ErrWrongCluster: the cluster name in the key or value is not the
	// cluster the connection is for.
	ErrWrongCluster = errors.New("value belongs to another cluster")
	// ErrClusterIDMismatch: the cluster ID in the value is not the ID of the
	// cluster the connection is for.
	ErrClusterIDMismatch = errors.New("cluster ID mismatch")
	// ErrIdentityOutOfRange: a numeric identity lies outside the identity
	// range of the cluster the connection is for.
	ErrIdentityOutOfRange = errors.New("identity out of cluster range")
	// ErrInvalid: any other invalid field (IP, CIDR, port, protocol, name...).
	ErrInvalid = errors.New("invalid value")

	// ErrInvalidClusterName: the name does not satisfy ValidateClusterName.
	ErrInvalidClusterName = errors.New("invalid cluster name")
	// ErrInvalidClusterID: the cluster ID is 0 or above maxConnectedClusters.
	ErrInvalidClusterID = errors.New("invalid cluster ID")
	// ErrInvalidMaxConnectedClusters: maxConnectedClusters is neither 255 nor 511.
	ErrInvalidMaxConnectedClusters = errors.New("invalid maxConnectedClusters")
	// ErrMaxConnectedClustersMismatch: the remote cluster is configured with
	// another maxConnectedClusters than the local one.
	ErrMaxConnectedClustersMismatch = errors.New("maxConnectedClusters mismatch")
)

// Size limits of values, checked before any parsing. They bound the memory and
// CPU one untrusted value can cost. etcd refuses requests above 1.5 MiB by
// default, so nothing larger can be stored anyway.
const (
	// MaxValueSize bounds ipcache entries, identities, cluster configs and
	// timestamps. A typical ipcache entry is ~200 B, an identity ~150 B.
	MaxValueSize = 64 << 10
	// MaxNodeValueSize bounds Node values, which carry the node's labels and
	// annotations (Kubernetes allows 256 KiB of annotations per object).
	MaxNodeValueSize = 256 << 10
	// MaxServiceValueSize bounds ClusterService values: a 10,000-backend
	// service with one port is ~600 KiB of JSON.
	MaxServiceValueSize = 1 << 20
)

// Remote is the cluster a connection is for, as the agent knows it from its
// own configuration and the remote's validated ClusterConfig. Decoders drop
// values that disagree with it.
type Remote struct {
	Name string
	ID   uint32
	// MaxConnectedClusters is 255 or 511; 0 means 255 (Cilium's default).
	MaxConnectedClusters int
}
