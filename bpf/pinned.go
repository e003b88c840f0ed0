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
	n, err := countLPM4[cmIpcacheValue](c.m)
	if err != nil {
		return n, fmt.Errorf("count ipcache: %w", err)
	}
	return n, nil
}

// PinnedCounts are the IPv4 entries of a node's pinned tunnel and ipcache
// maps.
type PinnedCounts struct{ Tunnels, IPCache int }

// CountPinned counts the IPv4 tunnel and ipcache entries of the maps pinned
// under pinDir, read-only, in batches (BPF_MAP_LOOKUP_BATCH: about 60
// syscalls for 250,000 entries; the kernel still walks its trie once per
// entry): a benchmark's check that a running agent's maps are complete.
func CountPinned(pinDir string) (PinnedCounts, error) {
	var c PinnedCounts
	for _, m := range []struct {
		name  string
		n     *int
		count func(*ebpf.Map) (int, error)
	}{
		{cmMapCmTunnel, &c.Tunnels, countLPM4[cmTunnelValue]},
		{cmMapCmIpcache, &c.IPCache, countLPM4[cmIpcacheValue]},
	} {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "maps", m.name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return c, fmt.Errorf("open pinned map %s: %w", m.name, err)
		}
		*m.n, err = m.count(mp)
		mp.Close()
		if err != nil {
			return c, fmt.Errorf("count %s: %w", m.name, err)
		}
	}
	return c, nil
}

// countBatch is how many entries one batch lookup of countLPM4 asks for.
const countBatch = 4096

// countLPM4 counts the entries of an IPv4 LPM trie of values V: in batches
// where the kernel has them, else one entry per syscall pair.
func countLPM4[V any](m *ebpf.Map) (int, error) {
	keys, vals := make([]cmLpm4Key, countBatch), make([]V, countBatch)
	var cur ebpf.MapBatchCursor
	n := 0
	for {
		k, err := m.BatchLookup(&cur, keys, vals, nil)
		n += k
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return n, nil
		case errors.Is(err, ebpf.ErrNotSupported) && n == 0:
			return countIterate[V](m)
		case err != nil:
			return n, err
		}
	}
}

func countIterate[V any](m *ebpf.Map) (int, error) {
	var k cmLpm4Key
	var v V
	n := 0
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n, it.Err()
}

// Close closes the map.
func (c *PinnedIPCache) Close() error { return c.m.Close() }
