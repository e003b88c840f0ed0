package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/internal/datapath"
)

// DumpPinned reads the state a node's datapath holds from the maps pinned
// under pinDir (Config.PinDir), read-only: unlike Open it loads no program,
// creates no map and leaves the attached links alone, so a test, a benchmark
// or an operator can watch a running agent's maps.
func DumpPinned(pinDir string) (datapath.State, error) {
	var m cmMaps
	if err := loadPinnedMaps(filepath.Join(pinDir, "maps"), &m); err != nil {
		return datapath.State{}, err
	}
	defer m.Close()
	return dumpMaps(&m)
}

// loadPinnedMaps opens, read-only, the pinned map of every `ebpf:"name"`
// field of the struct m points to.
func loadPinnedMaps(dir string, m any) error {
	v := reflect.ValueOf(m).Elem()
	var opened []*ebpf.Map
	for i := range v.NumField() {
		name := v.Type().Field(i).Tag.Get("ebpf")
		if name == "" {
			continue
		}
		mp, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			for _, o := range opened {
				o.Close()
			}
			return fmt.Errorf("open pinned map %s: %w", name, err)
		}
		opened = append(opened, mp)
		v.Field(i).Set(reflect.ValueOf(mp))
	}
	return nil
}

// PinnedIPCache reads single IPv4 entries of a running agent's pinned
// ipcache map, read-only, without loading anything: a benchmark's view of
// when an entry reached the kernel.
type PinnedIPCache struct{ m *ebpf.Map }

// OpenPinnedIPCache opens the IPv4 ipcache map pinned under pinDir.
func OpenPinnedIPCache(pinDir string) (*PinnedIPCache, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "maps", cmMapCmIpcache), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("open pinned map %s: %w", cmMapCmIpcache, err)
	}
	return &PinnedIPCache{m: m}, nil
}

// Lookup returns the entry of the longest prefix of the map that matches
// the IPv4 prefix p (p itself for a host entry of the map), false when none
// does.
func (c *PinnedIPCache) Lookup(p netip.Prefix) (datapath.IPCacheEntry, bool, error) {
	var v cmIpcacheValue
	if err := c.m.Lookup(lpmKey(p), &v); errors.Is(err, ebpf.ErrKeyNotExist) {
		return datapath.IPCacheEntry{}, false, nil
	} else if err != nil {
		return datapath.IPCacheEntry{}, false, fmt.Errorf("look up %s: %w", p, err)
	}
	e := datapath.IPCacheEntry{Prefix: p, Identity: v.Identity, ClusterID: v.ClusterId}
	if v.TunnelEp != 0 {
		e.TunnelEndpoint = addrFrom(v.TunnelEp)
	}
	return e, true, nil
}

// Count returns the number of entries in the map.
func (c *PinnedIPCache) Count() (int, error) {
	var k cmLpm4Key
	var v cmIpcacheValue
	n := 0
	it := c.m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		return n, fmt.Errorf("count ipcache: %w", err)
	}
	return n, nil
}

// Close closes the map.
func (c *PinnedIPCache) Close() error { return c.m.Close() }
