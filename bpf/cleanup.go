package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Cleanup removes a node's datapath without loading it (so it works for
// pins of another version too): it detaches every attachment recorded under
// pinDir/links (tcx links are unpinned; tc filters are deleted from their
// devices in the calling thread's network namespace), removes every pin
// under pinDir/maps, the directories, and pinDir itself unless it is the
// conventional /sys/fs/bpf (unmounting a bpffs mounted on it). A pinDir that
// does not exist is already clean.
func Cleanup(pinDir string) error {
	if _, err := os.Stat(pinDir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	linkDir, mapDir := filepath.Join(pinDir, "links"), filepath.Join(pinDir, "maps")
	var errs []error
	entries, _ := os.ReadDir(linkDir)
	for _, e := range entries {
		path := filepath.Join(linkDir, e.Name())
		a, ok := parsePinName(e.Name())
		if !ok {
			errs = append(errs, os.Remove(path))
			continue
		}
		if err := detachPin(path, a); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	left, _ := os.ReadDir(mapDir)
	for _, e := range left {
		errs = append(errs, os.Remove(filepath.Join(mapDir, e.Name())))
	}
	for _, dir := range []string{linkDir, mapDir} {
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if filepath.Clean(pinDir) != sysBPF { // the shared mount stays
		if isMountPoint(pinDir) {
			errs = append(errs, unix.Unmount(pinDir, 0))
		}
		errs = append(errs, os.Remove(pinDir))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up %q: %w", pinDir, err)
	}
	return nil
}
