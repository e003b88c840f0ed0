package bpf

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// DefaultPinDir is where a node's datapath pins its maps and links.
const DefaultPinDir = "/sys/fs/bpf/clustermesh"

// ErrNotAttached is returned by Detach for a device without our program.
var ErrNotAttached = errors.New("no clustermesh program attached")

// Config of a node's datapath.
type Config struct {
	// PinDir is a directory on (or to be mounted as) bpffs holding maps/ and
	// links/. If neither it nor a parent is on bpffs, a bpffs is mounted on it.
	PinDir string
	// CTEntries sizes each LRU map of load balancing (cm_lb_ct, cm_revnat
	// and their IPv6 twins); default DefaultCTEntries. The four maps are
	// preallocated: ≈ 350 bytes of kernel memory per entry in all.
	// Changing it for existing pins makes Open fail until Uninstall.
	CTEntries uint32
}

// DefaultCTEntries is the default size of the load-balancing LRU maps
// (≈ 23 MB of kernel memory for the four of them): 65,536 concurrent
// service flows per node and family.
const DefaultCTEntries = 65536

// RegisterFlags registers the datapath's flags on fs, defaulting to c's values.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	if c.PinDir == "" {
		c.PinDir = DefaultPinDir
	}
	fs.StringVar(&c.PinDir, "bpf-pin-dir", c.PinDir,
		"bpffs directory for the datapath's pinned maps and links (a bpffs is mounted there if needed)")
	if c.CTEntries == 0 {
		c.CTEntries = DefaultCTEntries
	}
	fs.Func("bpf-ct-entries", fmt.Sprintf("entries of each load-balancing connection-tracking map (default %d)", c.CTEntries),
		func(v string) error {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil || n == 0 {
				return fmt.Errorf("invalid entry count %q", v)
			}
			c.CTEntries = uint32(n)
			return nil
		})
}

// Hook says which program a device runs.
type Hook string

// The devices a node attaches programs to.
const (
	// HookEndpoint is the host side of a pod's veth (traffic from the pod).
	HookEndpoint Hook = "ep"
	// HookTunnel is the node's vxlan external device (decapsulated traffic).
	HookTunnel Hook = "tun"
)

// Datapath is a loaded datapath: programs, pinned maps and the tcx links it
// manages. Close releases the process's handles and keeps everything pinned
// (traffic keeps flowing); Uninstall removes it all.
type Datapath struct {
	cfg  Config
	log  *slog.Logger
	objs cmObjects
}

// Open loads the programs, reusing the maps pinned under cfg.PinDir (creating
// and pinning them on first use) and switching links pinned by an earlier
// instance over to the newly loaded programs.
func Open(cfg Config, log *slog.Logger) (*Datapath, error) {
	if cfg.PinDir == "" {
		cfg.PinDir = DefaultPinDir
	}
	if cfg.CTEntries == 0 {
		cfg.CTEntries = DefaultCTEntries
	}
	if err := ensureBPFFS(cfg.PinDir, sysBPF, log); err != nil {
		return nil, err
	}
	d := &Datapath{cfg: cfg, log: log}
	for _, dir := range []string{d.mapDir(), d.linkDir()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create pin dir: %w", err)
		}
	}
	spec, err := loadCm()
	if err != nil {
		return nil, fmt.Errorf("read datapath objects: %w", err)
	}
	for _, name := range []string{cmMapCmLbCt, cmMapCmRevnat, cmMapCmLbCt6, cmMapCmRevnat6} {
		spec.Maps[name].MaxEntries = cfg.CTEntries
	}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: d.mapDir()}}
	if err := spec.LoadAndAssign(&d.objs, opts); err != nil {
		return nil, fmt.Errorf("load datapath objects: %w", err)
	}
	if err := d.adoptLinks(); err != nil {
		d.objs.Close()
		return nil, err
	}
	return d, nil
}

func (d *Datapath) mapDir() string  { return filepath.Join(d.cfg.PinDir, "maps") }
func (d *Datapath) linkDir() string { return filepath.Join(d.cfg.PinDir, "links") }

func (d *Datapath) program(h Hook) (*ebpf.Program, error) {
	switch h {
	case HookEndpoint:
		return d.objs.CmFromPod, nil
	case HookTunnel:
		return d.objs.CmFromTunnel, nil
	}
	return nil, fmt.Errorf("unknown hook %q", h)
}

func linkName(h Hook, ifindex int) string { return fmt.Sprintf("%s_%d", h, ifindex) }

func parseLinkName(name string) (Hook, int, bool) {
	h, idx, ok := strings.Cut(name, "_")
	if !ok {
		return "", 0, false
	}
	n, err := strconv.Atoi(idx)
	if err != nil {
		return "", 0, false
	}
	return Hook(h), n, true
}

// adoptLinks updates the links pinned by a previous instance to this
// instance's programs and drops pins of links whose device is gone.
func (d *Datapath) adoptLinks() error {
	entries, err := os.ReadDir(d.linkDir())
	if err != nil {
		return fmt.Errorf("read link pins: %w", err)
	}
	for _, e := range entries {
		path := filepath.Join(d.linkDir(), e.Name())
		h, _, ok := parseLinkName(e.Name())
		prog, perr := d.program(h)
		if !ok || perr != nil {
			d.log.Warn("ignoring unknown pin", "path", path)
			continue
		}
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			d.log.Warn("dropping unreadable link pin", "path", path, "err", err)
			_ = os.Remove(path)
			continue
		}
		if err := l.Update(prog); err != nil {
			// The device is gone (defunct link): forget it.
			d.log.Info("dropping pin of detached link", "path", path, "err", err)
			_ = l.Unpin()
		}
		l.Close()
	}
	return nil
}

// Attach runs the program of h on ifindex's tcx ingress and pins the link.
// The ifindex is resolved in the calling thread's network namespace.
// Attaching again to the same device replaces the program (idempotent).
func (d *Datapath) Attach(h Hook, ifindex int) error {
	prog, err := d.program(h)
	if err != nil {
		return err
	}
	path := filepath.Join(d.linkDir(), linkName(h, ifindex))
	if l, err := link.LoadPinnedLink(path, nil); err == nil {
		err = l.Update(prog)
		if err == nil {
			l.Close()
			return d.afterAttach(h, ifindex)
		}
		_ = l.Unpin()
		l.Close()
	}
	l, err := link.AttachTCX(link.TCXOptions{
		Interface: ifindex,
		Program:   prog,
		Attach:    ebpf.AttachTCXIngress,
		Anchor:    link.Tail(),
	})
	if err != nil {
		return fmt.Errorf("attach %s to ifindex %d: %w", h, ifindex, err)
	}
	defer l.Close()
	if err := l.Pin(path); err != nil {
		return fmt.Errorf("pin link: %w", err)
	}
	return d.afterAttach(h, ifindex)
}

func (d *Datapath) afterAttach(h Hook, ifindex int) error {
	if h != HookTunnel {
		return nil
	}
	v := cmConfigValue{TunnelIfindex: uint32(ifindex)}
	if err := d.objs.CmConfig.Update(uint32(0), &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set tunnel device: %w", err)
	}
	return nil
}

// Detach removes the program of h from ifindex and its pin.
func (d *Datapath) Detach(h Hook, ifindex int) error {
	path := filepath.Join(d.linkDir(), linkName(h, ifindex))
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("detach %s from ifindex %d: %w", h, ifindex, ErrNotAttached)
	}
	if err != nil {
		return fmt.Errorf("load link pin: %w", err)
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin link: %w", err)
	}
	if h == HookTunnel {
		_ = d.objs.CmConfig.Update(uint32(0), &cmConfigValue{}, ebpf.UpdateAny)
	}
	// Closing the last reference detaches it (unless the device is gone).
	return nil
}

// Close releases this process's handles; pinned maps and links stay, so
// packets keep being forwarded with the last programmed state.
func (d *Datapath) Close() error { return d.objs.Close() }

// Uninstall detaches every pinned link, removes the pinned maps and the pin
// directory (unmounting the bpffs if it is mounted there) and closes d.
func (d *Datapath) Uninstall() error {
	var errs []error
	entries, _ := os.ReadDir(d.linkDir())
	for _, e := range entries {
		path := filepath.Join(d.linkDir(), e.Name())
		if l, err := link.LoadPinnedLink(path, nil); err == nil {
			errs = append(errs, l.Unpin(), l.Close())
		} else {
			errs = append(errs, os.Remove(path))
		}
	}
	for _, m := range []*ebpf.Map{d.objs.CmBackends, d.objs.CmConfig, d.objs.CmEndpoints, d.objs.CmIpcache,
		d.objs.CmLbCt, d.objs.CmLbSlots, d.objs.CmRevnat, d.objs.CmServices, d.objs.CmTunnel,
		d.objs.CmBackends6, d.objs.CmEndpoints6, d.objs.CmIpcache6, d.objs.CmLbCt6, d.objs.CmRevnat6,
		d.objs.CmServices6, d.objs.CmTunnel6} {
		if m != nil {
			errs = append(errs, m.Unpin())
		}
	}
	errs = append(errs, d.objs.Close())
	// Pins this binary does not know (e.g. left by another version).
	for _, dir := range []string{d.linkDir(), d.mapDir()} {
		left, _ := os.ReadDir(dir)
		for _, e := range left {
			errs = append(errs, os.Remove(filepath.Join(dir, e.Name())))
		}
	}
	errs = append(errs, os.Remove(d.linkDir()), os.Remove(d.mapDir()))
	if filepath.Clean(d.cfg.PinDir) != sysBPF { // the shared mount stays
		if isMountPoint(d.cfg.PinDir) {
			errs = append(errs, unix.Unmount(d.cfg.PinDir, 0))
		}
		errs = append(errs, os.Remove(d.cfg.PinDir))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	return nil
}

func isBPFFS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}

func isMountPoint(path string) bool {
	return isBPFFS(path) && !isBPFFS(filepath.Dir(path))
}

// sysBPF is the conventional bpffs mount point. It is a directory of sysfs,
// in which no directory can be created, so a PinDir below it needs the bpffs
// mounted on it rather than on PinDir.
const sysBPF = "/sys/fs/bpf"

// ensureBPFFS makes sure dir is on a bpffs: if its nearest existing ancestor
// is not on one, a bpffs is mounted on standard when that is that ancestor
// (the conventional place, left mounted by Uninstall) and on dir otherwise.
func ensureBPFFS(dir, standard string, log *slog.Logger) error {
	p := dir
	for {
		if _, err := os.Stat(p); err == nil {
			break
		}
		if p == filepath.Dir(p) {
			break
		}
		p = filepath.Dir(p)
	}
	if isBPFFS(p) {
		return os.MkdirAll(dir, 0o700)
	}
	target := dir
	if p == standard && p != dir {
		target = standard
	}
	if err := os.MkdirAll(target, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", target, err)
	}
	if err := unix.Mount("bpf", target, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", target, err)
	}
	log.Info("mounted bpffs", "dir", target)
	return os.MkdirAll(dir, 0o700)
}
