package wire

import "fmt"

// Identity and cluster-ID arithmetic (DESIGN §3). Numeric identities are 24
// bits. The cluster ID takes the top 8 bits with 255 connected clusters
// (identity = clusterID<<16 | local) and the top 9 bits with 511 (shift 15).
const (
	// IdentityBits is the width of a numeric identity.
	IdentityBits = 24
	// MaxIdentity is the largest numeric identity.
	MaxIdentity = 1<<IdentityBits - 1
	// FirstLocalID is the first local id the clustermesh-apiserver
	// allocates; 1..255 are Cilium's reserved identities.
	FirstLocalID = 256
	// DefaultMaxConnectedClusters is Cilium's default (8 cluster-ID bits).
	DefaultMaxConnectedClusters = 255
	// ExtendedMaxConnectedClusters is the extended mode (9 cluster-ID bits).
	ExtendedMaxConnectedClusters = 511
	// MaxClusterNameLength bounds cluster names.
	MaxClusterNameLength = 32
	// DefaultClusterName is the name of a cluster that is not in a mesh; it
	// may not be used with a non-zero cluster ID.
	DefaultClusterName = "default"
)

// ClusterIDShift returns how far the cluster ID is shifted in a numeric
// identity: 15 for 511 connected clusters, else 16 (255, or 0 meaning 255).
func ClusterIDShift(maxConnected int) uint {
	if maxConnected == ExtendedMaxConnectedClusters {
		return 15
	}
	return 16
}

func maxClusterID(maxConnected int) uint32 {
	if maxConnected == ExtendedMaxConnectedClusters {
		return ExtendedMaxConnectedClusters
	}
	return DefaultMaxConnectedClusters
}

// ClusterIDOf returns the cluster ID encoded in a numeric identity.
func ClusterIDOf(identity uint32, maxConnected int) uint32 {
	return (identity & MaxIdentity) >> ClusterIDShift(maxConnected)
}

// LocalIDOf returns the cluster-local part of a numeric identity.
func LocalIDOf(identity uint32, maxConnected int) uint32 {
	return identity & (1<<ClusterIDShift(maxConnected) - 1)
}

// MakeIdentity returns clusterID<<shift | local. It fails (ErrInvalid) when
// local does not fit below the shift or clusterID is above the maximum.
func MakeIdentity(clusterID, local uint32, maxConnected int) (uint32, error) {
	shift := ClusterIDShift(maxConnected)
	if local >= 1<<shift {
		return 0, fmt.Errorf("%w: local identity %d does not fit in %d bits", ErrInvalid, local, shift)
	}
	if clusterID > maxClusterID(maxConnected) {
		return 0, fmt.Errorf("%w: cluster ID %d above %d", ErrInvalid, clusterID, maxClusterID(maxConnected))
	}
	return clusterID<<shift | local, nil
}

// IdentityRange returns the identities the clustermesh-apiserver of
// clusterID allocates from: local ids FirstLocalID up to the last one of
// the cluster's block. Example with 255 clusters: cluster 3 → 196864..262143.
func IdentityRange(clusterID uint32, maxConnected int) (lo, hi uint32) {
	shift := ClusterIDShift(maxConnected)
	return clusterID<<shift | FirstLocalID, (clusterID+1)<<shift - 1
}

// ClusterIdentityRange returns the identities that belong to clusterID as a
// reader accepts them: the whole block of the cluster, local id 0 included,
// as Cilium's GetMinimalAllocationIdentity/GetMaximumAllocationIdentity do for
// a non-zero cluster ID. For cluster 0 it starts at FirstLocalID.
func ClusterIdentityRange(clusterID uint32, maxConnected int) (lo, hi uint32) {
	shift := ClusterIDShift(maxConnected)
	lo = clusterID << shift
	if clusterID == 0 {
		lo = FirstLocalID
	}
	return lo, (clusterID+1)<<shift - 1
}

// ValidateMaxConnectedClusters accepts 255 and 511.
func ValidateMaxConnectedClusters(n int) error {
	if n != DefaultMaxConnectedClusters && n != ExtendedMaxConnectedClusters {
		return fmt.Errorf("%w: %d (want %d or %d)", ErrInvalidMaxConnectedClusters,
			n, DefaultMaxConnectedClusters, ExtendedMaxConnectedClusters)
	}
	return nil
}

// ValidateClusterName checks a cluster name: at most 32 characters matching
// ^([a-z0-9][-a-z0-9]*)?[a-z0-9]$.
func ValidateClusterName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrInvalidClusterName)
	case len(name) > MaxClusterNameLength:
		return fmt.Errorf("%w: %q is longer than %d characters", ErrInvalidClusterName, name, MaxClusterNameLength)
	case !isClusterName(name):
		return fmt.Errorf("%w: %q must consist of lower case alphanumerics and '-', and start and end with an alphanumeric", ErrInvalidClusterName, name)
	}
	return nil
}

// ValidateClusterID checks that id is in 1..maxConnected (0 is reserved).
func ValidateClusterID(id uint32, maxConnected int) error {
	if id == 0 {
		return fmt.Errorf("%w: 0 is reserved", ErrInvalidClusterID)
	}
	if m := maxClusterID(maxConnected); id > m {
		return fmt.Errorf("%w: %d is above maxConnectedClusters %d", ErrInvalidClusterID, id, m)
	}
	return nil
}

// ValidateCluster checks a cluster's own configuration: a valid
// maxConnectedClusters, a valid name, an ID in 0..maxConnected (0 only for a
// cluster outside any mesh), and not the name "default" with a non-zero ID.
func ValidateCluster(name string, id uint32, maxConnected int) error {
	if err := ValidateMaxConnectedClusters(maxConnected); err != nil {
		return err
	}
	if err := ValidateClusterName(name); err != nil {
		return err
	}
	if id == 0 {
		return nil
	}
	if err := ValidateClusterID(id, maxConnected); err != nil {
		return err
	}
	if name == DefaultClusterName {
		return fmt.Errorf("%w: %q cannot be used with a non-zero cluster ID", ErrInvalidClusterName, name)
	}
	return nil
}

// isClusterName matches ^([a-z0-9][-a-z0-9]*)?[a-z0-9]$ without a regexp:
// decoders check a name for every value they read.
func isClusterName(s string) bool {
	alnum := func(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }
	if s == "" || !alnum(s[0]) || !alnum(s[len(s)-1]) {
		return false
	}
	for i := 1; i < len(s)-1; i++ {
		if !alnum(s[i]) && s[i] != '-' {
			return false
		}
	}
	return true
}

// validate checks the Remote a decoder was given.
func (r Remote) validate() error {
	if r.MaxConnectedClusters != 0 {
		if err := ValidateMaxConnectedClusters(r.MaxConnectedClusters); err != nil {
			return fmt.Errorf("remote %q: %w", r.Name, err)
		}
	}
	if err := ValidateClusterName(r.Name); err != nil {
		return fmt.Errorf("remote: %w", err)
	}
	if err := ValidateClusterID(r.ID, r.MaxConnectedClusters); err != nil {
		return fmt.Errorf("remote %q: %w", r.Name, err)
	}
	return nil
}
