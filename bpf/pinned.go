package bpf

import (
	"fmt"
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
