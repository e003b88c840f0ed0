package bpf

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// batchUnsupported reports whether err says the kernel has no batch ops for
// the map's type: cilium/ebpf's ErrNotSupported (no batch API at all) or
// ENOTSUPP/EOPNOTSUPP (the map type lacks them). Only these turn batching off
// for a map. EINVAL is not among them: it is the kernel refusing this call's
// keys or values, which says nothing about the next batch, and is returned
// as the error of the call.
func batchUnsupported(err error) bool {
	return errors.Is(err, ebpf.ErrNotSupported) ||
		errors.Is(err, syscall.Errno(524)) /* ENOTSUPP */ || errors.Is(err, unix.EOPNOTSUPP)
}

// singleMax is the most entries written (or deleted) one syscall each
// rather than with a batch syscall. A steady-state change is often one
// entry: a plain update takes as long as a batch of one (≈ 1.6 µs on an
// LPM trie here) with fewer allocations. From two entries on, one batch
// syscall is cheaper than one syscall per entry (bench/README.md, "Map
// updates: single versus batch").
const singleMax = 1

// batchOff is what the batch helpers need of a writer (Writer,
// PolicyWriter): the maps whose kernel rejected batch operations.
type batchOff interface{ unbatched() map[*ebpf.Map]bool }

func (w *Writer) unbatched() map[*ebpf.Map]bool { return w.noBatch }

// batchUpdate writes keys[i] = vals[i] in one syscall, or one by one for a
// single entry or where the kernel has no batch update for the map's type.
func batchUpdate[K, V any](w batchOff, m *ebpf.Map, keys []K, vals []V) error {
	if len(keys) == 0 {
		return nil
	}
	if len(keys) > singleMax && !w.unbatched()[m] {
		_, err := m.BatchUpdate(keys, vals, nil)
		if err == nil {
			return nil
		}
		if !batchUnsupported(err) {
			return fmt.Errorf("update %s: %w", m, err)
		}
		w.unbatched()[m] = true
	}
	for i := range keys {
		if err := update1(m, &keys[i], &vals[i]); err != nil {
			return fmt.Errorf("update %s: %w", m, err)
		}
	}
	return nil
}

// update1 writes one entry, handing the kernel the memory of k and v as it
// is (an unsafe.Pointer, which cilium/ebpf passes on unmarshalled) when
// their sizes are the map's: a typed key or value is first proven to be its
// own wire form by reflection, ≈ 2.5 µs of cold code per call in steady
// state (one change per millisecond; the syscall itself ≈ 6 µs), the same
// bytes. The generated types are the C structs' layout with their padding
// written out (TestPlanTypesAreWireLayout). Per-CPU maps, whose values are
// one per CPU, take the typed path.
func update1[K, V any](m *ebpf.Map, k *K, v *V) error {
	if !rawOK[K, V](m) {
		return m.Update(k, v, ebpf.UpdateAny)
	}
	return m.Update(unsafe.Pointer(k), unsafe.Pointer(v), ebpf.UpdateAny)
}

// delete1 deletes one key, as update1 writes one entry.
func delete1[K any](m *ebpf.Map, k *K) error {
	if !rawOK[K, struct{}](m) {
		return m.Delete(k)
	}
	return m.Delete(unsafe.Pointer(k))
}

// rawOK reports whether m's keys are K's memory and, unless V is struct{},
// its values V's.
func rawOK[K, V any](m *ebpf.Map) bool {
	var k K
	var v V
	if uintptr(m.KeySize()) != unsafe.Sizeof(k) {
		return false
	}
	if _, none := any(v).(struct{}); none {
		return true
	}
	switch m.Type() {
	case ebpf.PerCPUHash, ebpf.PerCPUArray, ebpf.LRUCPUHash, ebpf.PerCPUCGroupStorage:
		return false
	}
	return uintptr(m.ValueSize()) == unsafe.Sizeof(v)
}

// batchDelete deletes keys, with a plain delete for a single one (see
// singleMax); absent keys are not an error.
func batchDelete[K any](w batchOff, m *ebpf.Map, keys []K) error {
	for len(keys) > singleMax && !w.unbatched()[m] {
		n, err := m.BatchDelete(keys, nil)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, ebpf.ErrKeyNotExist) && n < len(keys):
			keys = keys[n+1:]
		case batchUnsupported(err):
			w.unbatched()[m] = true
		default:
			return fmt.Errorf("delete from %s: %w", m, err)
		}
	}
	for i := range keys {
		if err := delete1(m, &keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete from %s: %w", m, err)
		}
	}
	return nil
}

// idAlloc hands out non-zero ids, moving forward so that an id freed by a
// deleted service or backend is not reused soon (CT entries may still name it).
type idAlloc struct {
	used map[uint32]bool
	next uint32
}

func (a *idAlloc) reset() {
	a.used = map[uint32]bool{}
}

func (a *idAlloc) mark(id uint32) {
	a.used[id] = true
	a.next = max(a.next, id)
}

func (a *idAlloc) get() uint32 {
	for {
		a.next++
		if a.next != 0 && !a.used[a.next] {
			a.used[a.next] = true
			return a.next
		}
	}
}

func (a *idAlloc) free(id uint32) { delete(a.used, id) }
