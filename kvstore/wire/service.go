package wire

import (
	"encoding/json"
	"fmt"
	"net/netip"
)

// ClusterService is a service of a cluster, at ServiceKey(Cluster, Namespace,
// Name). JSON keys and omitempty choices are those of Cilium's
// pkg/clustermesh/store.ClusterService: hostnames and zones are omitted when
// empty, every other field is always written.
//
// WARNING - STABLE WIRE API.
type ClusterService struct {
	Cluster   string `json:"cluster"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Frontends maps a frontend IP to its ports.
	Frontends map[string]Ports `json:"frontends"`
	// Backends maps a backend IP to its ports.
	Backends map[string]Ports `json:"backends"`
	// Hostnames maps a backend IP to the backend's hostname.
	Hostnames map[string]string `json:"hostnames,omitempty"`
	// Zones maps a backend IP to its topology zone.
	Zones           map[string]BackendZone `json:"zones,omitempty"`
	Labels          map[string]string      `json:"labels"`
	Selector        map[string]string      `json:"selector"`
	IncludeExternal bool                   `json:"includeExternal"`
	Shared          bool                   `json:"shared"`
	ClusterID       uint32                 `json:"clusterID"`
}

// Ports maps a port name ("" for an unnamed port) to its L4 port.
type Ports map[string]PortConfig

// PortConfig is an L4 port: {"Protocol":"TCP","Port":80} (Cilium's
// loadbalancer.L4Addr).
type PortConfig struct {
	Protocol Protocol
	Port     uint16
}

// Protocol is an L4 protocol as written on the wire.
type Protocol string

// Protocols a port may carry.
const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
)

// Valid reports whether p is TCP, UDP or SCTP.
func (p Protocol) Valid() bool { return p == TCP || p == UDP || p == SCTP }

// BackendZone places a backend in a zone and lists the zones that should use
// it (Kubernetes topology hints).
type BackendZone struct {
	Zone     string    `json:"zone"`
	ForZones []ForZone `json:"forZones"`
}

// ForZone names a zone that should consume a backend.
type ForZone struct {
	Name string `json:"name"`
}

// Validate checks the fields of s on their own (not against a remote):
// names, canonical IP keys, ports 1..65535, protocols. Errors wrap ErrInvalid.
func (s *ClusterService) Validate() error {
	if err := s.validate(); err != nil {
		return fmt.Errorf("service %s/%s/%s: %w: %w", s.Cluster, s.Namespace, s.Name, ErrInvalid, err)
	}
	return nil
}

func (s *ClusterService) validate() error {
	if err := ValidateClusterName(s.Cluster); err != nil {
		return err
	}
	if err := validateObjectName("namespace", s.Namespace); err != nil {
		return err
	}
	if err := validateObjectName("name", s.Name); err != nil {
		return err
	}
	if err := validateAddrMap("frontends", s.Frontends); err != nil {
		return err
	}
	if err := validateAddrMap("backends", s.Backends); err != nil {
		return err
	}
	for ip := range s.Hostnames {
		if err := validateIPKey(ip); err != nil {
			return fmt.Errorf("hostnames: %w", err)
		}
	}
	for ip := range s.Zones {
		if err := validateIPKey(ip); err != nil {
			return fmt.Errorf("zones: %w", err)
		}
	}
	return nil
}

func validateAddrMap(field string, m map[string]Ports) error {
	for ip, ports := range m {
		if err := validateIPKey(ip); err != nil {
			return fmt.Errorf("%s: %w", field, err)
		}
		for name, pc := range ports {
			if pc.Port == 0 {
				return fmt.Errorf("%s[%s][%q]: port 0", field, ip, name)
			}
			if !pc.Protocol.Valid() {
				return fmt.Errorf("%s[%s][%q]: protocol %q is not TCP, UDP or SCTP", field, ip, name, pc.Protocol)
			}
		}
	}
	return nil
}

// validateIPKey accepts an IP written in its canonical form, as both Cilium
// and clustermesh write map keys.
func validateIPKey(s string) error {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return err
	}
	if err := validateAddr(a, 0); err != nil {
		return err
	}
	if a.String() != s {
		return fmt.Errorf("IP %q is not in canonical form %q", s, a.String())
	}
	return nil
}

// canonical makes the empty-map choices of a decoded service deterministic:
// the always-written maps are non-nil, the omitempty ones nil when empty.
// Cilium initialises the former before unmarshalling, so a reader sees {}
// and null alike.
func (s *ClusterService) canonical() {
	if s.Frontends == nil {
		s.Frontends = map[string]Ports{}
	}
	if s.Backends == nil {
		s.Backends = map[string]Ports{}
	}
	if s.Labels == nil {
		s.Labels = map[string]string{}
	}
	if s.Selector == nil {
		s.Selector = map[string]string{}
	}
	if len(s.Hostnames) == 0 {
		s.Hostnames = nil
	}
	if len(s.Zones) == 0 {
		s.Zones = nil
	}
}

// MarshalService encodes s as Cilium does (nil frontends, backends, labels
// and selector are written as {}), after checking it with Validate.
func MarshalService(s ClusterService) ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	s.canonical()
	b, err := json.Marshal(&s)
	if err != nil {
		return nil, fmt.Errorf("service %s/%s/%s: %w", s.Cluster, s.Namespace, s.Name, err)
	}
	if len(b) > MaxServiceValueSize {
		return nil, fmt.Errorf("service %s/%s/%s: %w: %d bytes", s.Cluster, s.Namespace, s.Name, ErrTooLarge, len(b))
	}
	return b, nil
}

// DecodeService decodes and validates the value of a service key (state or
// kvstoremesh cache) read from remote r.
func DecodeService(r Remote, key string, value []byte) (ClusterService, error) {
	if len(value) > MaxServiceValueSize {
		return ClusterService{}, fmt.Errorf("service %q: %w: %d bytes", key, ErrTooLarge, len(value))
	}
	if err := r.validate(); err != nil {
		return ClusterService{}, err
	}
	cluster, ns, name, err := ParseServiceKey(key)
	if err != nil {
		return ClusterService{}, err
	}
	if cluster != r.Name {
		return ClusterService{}, fmt.Errorf("service %q: %w: key is for cluster %q, connection for %q", key, ErrWrongCluster, cluster, r.Name)
	}
	var s ClusterService
	if err := json.Unmarshal(value, &s); err != nil {
		return ClusterService{}, fmt.Errorf("service %q: %w: %v", key, ErrMalformed, err)
	}
	switch {
	case s.Cluster != r.Name:
		return ClusterService{}, fmt.Errorf("service %q: %w: value says cluster %q, connection for %q", key, ErrWrongCluster, s.Cluster, r.Name)
	case s.Namespace != ns || s.Name != name:
		return ClusterService{}, fmt.Errorf("service %q: %w: value says %s/%s", key, ErrKeyMismatch, s.Namespace, s.Name)
	case s.ClusterID != r.ID:
		return ClusterService{}, fmt.Errorf("service %q: %w: value says %d, cluster %q has %d", key, ErrClusterIDMismatch, s.ClusterID, r.Name, r.ID)
	}
	if err := s.Validate(); err != nil {
		return ClusterService{}, err
	}
	s.canonical()
	return s, nil
}
