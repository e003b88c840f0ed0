package wire

import (
	"errors"
	"net/netip"
	"testing"
)

func TestKeys(t *testing.T) {
	ip4 := netip.MustParseAddr("10.1.0.7")
	ip6 := netip.MustParseAddr("fd00:1::7")
	tests := []struct {
		name, got, want string
	}{
		{"cluster config", ClusterConfigKey("c1"), "cilium/cluster-config/c1"},
		{"heartbeat", HeartbeatKey, "cilium/.heartbeat"},
		{"nodes prefix", NodesPrefix("c1"), "cilium/state/nodes/v1/c1/"},
		{"node", NodeKey("c1", "node1"), "cilium/state/nodes/v1/c1/node1"},
		{"services prefix", ServicesPrefix("c1"), "cilium/state/services/v1/c1/"},
		{"service", ServiceKey("c1", "shop", "web"), "cilium/state/services/v1/c1/shop/web"},
		{"identities prefix", IdentitiesPrefix, "cilium/state/identities/v1/"},
		{"identity", IdentityKey(196915), "cilium/state/identities/v1/id/196915"},
		{"ip prefix", IPPrefix, "cilium/state/ip/v1/default/"},
		{"ip v4", IPKey(ip4), "cilium/state/ip/v1/default/10.1.0.7"},
		{"ip v6", IPKey(ip6), "cilium/state/ip/v1/default/fd00:1::7"},
		{"ip cidr", IPPrefixKey(netip.MustParsePrefix("10.3.0.0/16")), "cilium/state/ip/v1/default/10.3.0.0/16"},
		{"synced nodes", SyncedKey("c1", KindNodes), "cilium/synced/c1/cilium/state/nodes/v1"},
		{"synced services", SyncedKey("c1", KindServices), "cilium/synced/c1/cilium/state/services/v1"},
		{"synced identities", SyncedKey("c1", KindIdentities), "cilium/synced/c1/cilium/state/identities/v1"},
		{"synced ip", SyncedKey("c1", KindIP), "cilium/synced/c1/cilium/state/ip/v1"},
		{"cached node", CachedNodeKey("c1", "node1"), "cilium/cache/nodes/v1/c1/node1"},
		{"cached service", CachedServiceKey("c1", "shop", "web"), "cilium/cache/services/v1/c1/shop/web"},
		{"cached identity", CachedIdentityKey("c1", 196915), "cilium/cache/identities/v1/c1/id/196915"},
		{"cached ip", CachedIPKey("c1", ip4), "cilium/cache/ip/v1/c1/10.1.0.7"},
		{"cached synced ip", CachedSyncedKey("c1", KindIP), "cilium/synced/c1/cilium/cache/ip/v1"},
		{"watch nodes", WatchPrefix(KindNodes, "c1", false), "cilium/state/nodes/v1/c1/"},
		{"watch identities", WatchPrefix(KindIdentities, "c1", false), "cilium/state/identities/v1/id/"},
		{"watch ip", WatchPrefix(KindIP, "c1", false), "cilium/state/ip/v1/default/"},
		{"watch cached services", WatchPrefix(KindServices, "c1", true), "cilium/cache/services/v1/c1/"},
		{"watch cached identities", WatchPrefix(KindIdentities, "c1", true), "cilium/cache/identities/v1/c1/id/"},
		{"watch cached ip", WatchPrefix(KindIP, "c1", true), "cilium/cache/ip/v1/c1/"},
		{"watch synced", WatchSyncedKey(KindServices, "c1", false), "cilium/synced/c1/cilium/state/services/v1"},
		{"watch cached synced", WatchSyncedKey(KindServices, "c1", true), "cilium/synced/c1/cilium/cache/services/v1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %q, want %q", tt.got, tt.want)
			}
		})
	}
}

func TestKinds(t *testing.T) {
	for _, k := range Kinds() {
		if !k.Valid() {
			t.Errorf("%q not valid", k)
		}
	}
	if Kind("endpoints").Valid() {
		t.Error("unknown kind valid")
	}
}

func TestParseKeys(t *testing.T) {
	t.Run("node", func(t *testing.T) {
		tests := []struct {
			name, key, cluster, node string
			ok                       bool
		}{
			{"state", "cilium/state/nodes/v1/c1/node1", "c1", "node1", true},
			{"cache", "cilium/cache/nodes/v1/c1/node1", "c1", "node1", true},
			{"no node", "cilium/state/nodes/v1/c1/", "", "", false},
			{"other prefix", "cilium/state/services/v1/c1/a", "", "", false},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				c, n, err := ParseNodeKey(tt.key)
				if (err == nil) != tt.ok || c != tt.cluster || n != tt.node {
					t.Errorf("got %q %q %v", c, n, err)
				}
				if err != nil && !errors.Is(err, ErrKeyMismatch) {
					t.Errorf("error %v does not wrap ErrKeyMismatch", err)
				}
			})
		}
	})
	t.Run("service", func(t *testing.T) {
		tests := []struct {
			name, key, cluster, ns, svc string
			ok                          bool
		}{
			{"state", "cilium/state/services/v1/c1/shop/web", "c1", "shop", "web", true},
			{"cache", "cilium/cache/services/v1/c1/shop/web", "c1", "shop", "web", true},
			{"too deep", "cilium/state/services/v1/c1/shop/web/x", "", "", "", false},
			{"empty name", "cilium/state/services/v1/c1/shop/", "", "", "", false},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				c, ns, n, err := ParseServiceKey(tt.key)
				if (err == nil) != tt.ok || c != tt.cluster || ns != tt.ns || n != tt.svc {
					t.Errorf("got %q %q %q %v", c, ns, n, err)
				}
			})
		}
	})
	t.Run("identity", func(t *testing.T) {
		tests := []struct {
			name, key, cluster string
			id                 uint32
			ok                 bool
		}{
			{"state", "cilium/state/identities/v1/id/196915", "", 196915, true},
			{"cache", "cilium/cache/identities/v1/c1/id/196915", "c1", 196915, true},
			{"leading zero", "cilium/state/identities/v1/id/0196915", "", 0, false},
			{"sign", "cilium/state/identities/v1/id/+5", "", 0, false},
			{"value key", "cilium/state/identities/v1/value/k8s:a=b;/10.0.0.1", "", 0, false},
			{"too big", "cilium/state/identities/v1/id/4294967296", "", 0, false},
			{"cache without id/", "cilium/cache/identities/v1/c1/196915", "", 0, false},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				c, id, err := ParseIdentityKey(tt.key)
				if (err == nil) != tt.ok || c != tt.cluster || id != tt.id {
					t.Errorf("got %q %d %v", c, id, err)
				}
			})
		}
	})
	t.Run("ip", func(t *testing.T) {
		tests := []struct {
			name, key, cluster, ip string
			ok                     bool
		}{
			{"state", "cilium/state/ip/v1/default/10.1.0.7", "", "10.1.0.7", true},
			{"state cidr", "cilium/state/ip/v1/default/10.3.0.0/16", "", "10.3.0.0/16", true},
			{"cache", "cilium/cache/ip/v1/c1/fd00::1", "c1", "fd00::1", true},
			{"empty", "cilium/state/ip/v1/default/", "", "", false},
			{"other space", "cilium/state/ip/v1/other/10.1.0.7", "", "", false},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				c, ip, err := ParseIPKey(tt.key)
				if (err == nil) != tt.ok || c != tt.cluster || ip != tt.ip {
					t.Errorf("got %q %q %v", c, ip, err)
				}
			})
		}
	})
	t.Run("ip prefix", func(t *testing.T) {
		tests := []struct {
			name, key, want string // want "": an error
		}{
			{"host v4", "cilium/state/ip/v1/default/10.1.0.7", "10.1.0.7/32"},
			{"host v4 /32", "cilium/state/ip/v1/default/10.1.0.7/32", "10.1.0.7/32"},
			{"cidr", "cilium/state/ip/v1/default/10.3.0.0/16", "10.3.0.0/16"},
			{"cache host v6", "cilium/cache/ip/v1/c1/fd00::1", "fd00::1/128"},
			{"not an address", "cilium/state/ip/v1/default/pod-a", ""},
			{"bad bits", "cilium/state/ip/v1/default/10.3.0.0/40", ""},
			{"other space", "cilium/state/ip/v1/other/10.1.0.7", ""},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				p, err := IPKeyPrefix(tt.key)
				if tt.want == "" {
					if !errors.Is(err, ErrKeyMismatch) {
						t.Errorf("got %v %v, want an error wrapping ErrKeyMismatch", p, err)
					}
					return
				}
				if err != nil || p != netip.MustParsePrefix(tt.want) {
					t.Errorf("got %v %v, want %s", p, err, tt.want)
				}
			})
		}
	})
}
