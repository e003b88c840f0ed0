package bpf

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"

	"github.com/cilium/ebpf"
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
	// Changing it for existing pins rebuilds those maps at Open (their
	// connections are forgotten).
	CTEntries uint32
	// PolicyEntries sizes cm_policy, the policy map shared by every local
	// identity; default DefaultPolicyEntries. It is not preallocated: the
	// kernel allocates per key written. Changing it for an existing pin
	// rebuilds the map at Open (empty until the agent reprograms it; its
	// subjects stay in default deny meanwhile).
	PolicyEntries uint32
	// Attach selects how programs are attached: AttachAuto (tcx from Linux
	// 6.6, tc clsact before), AttachTCX or AttachTC.
	Attach AttachMode
	// Coexist hands traffic to local endpoints to the host stack instead of
	// redirecting it into the pod (the agent's coexistence mode).
	Coexist bool
}

// DefaultCTEntries is the default size of the load-balancing LRU maps
// (≈ 23 MB of kernel memory for the four of them): 65,536 concurrent
// service flows per node and family.
const DefaultCTEntries = 65536

// DefaultPolicyEntries is the default capacity of cm_policy in keys.
const DefaultPolicyEntries = 1 << 20

// entryCount parses a flag's positive map size into dst.
func entryCount(dst *uint32) func(string) error {
	return func(v string) error {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n == 0 {
			return fmt.Errorf("invalid entry count %q", v)
		}
		*dst = uint32(n)
		return nil
	}
}

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
		entryCount(&c.CTEntries))
	if c.PolicyEntries == 0 {
		c.PolicyEntries = DefaultPolicyEntries
	}
	fs.Func("bpf-policy-entries", fmt.Sprintf("capacity of the policy map in keys, for all local identities together (default %d); an identity whose policy does not fit is refused, in default deny", c.PolicyEntries),
		entryCount(&c.PolicyEntries))
	if c.Attach == "" {
		c.Attach = AttachAuto
	}
	fs.Func("bpf-attach", "how programs are attached: auto (tcx from Linux 6.6, tc clsact before), tcx or tc (default auto)",
		func(v string) error {
			m := AttachMode(v)
			if m != AttachAuto && m != AttachTCX && m != AttachTC {
				return fmt.Errorf("invalid attach mode %q (want auto, tcx or tc)", v)
			}
			c.Attach = m
			return nil
		})
}

// Hook says which program a device runs.
type Hook string

// The devices a node attaches programs to.
const (
	// HookEndpoint is the host side of a pod's veth: its ingress (traffic
	// from the pod) and its egress (what the host stack delivers to the
	// pod, tracked for the pod's replies), attached and detached together.
	HookEndpoint Hook = "ep"
	// HookTunnel is the node's vxlan external device (decapsulated traffic).
	HookTunnel Hook = "tun"
	// HookTunnelEgress is the egress of the same device: it sets the tunnel
	// key of packets the host stack routes into it (coexistence mode).
	HookTunnelEgress Hook = "tunout"
)

// hookEndpointEgress records the egress half of HookEndpoint.
const hookEndpointEgress Hook = "epout"

// egress reports whether h runs at the device's egress (else ingress).
func (h Hook) egress() bool { return h == HookTunnelEgress || h == hookEndpointEgress }

// parts returns the attachments h stands for.
func (h Hook) parts() []Hook {
	if h == HookEndpoint {
		return []Hook{HookEndpoint, hookEndpointEgress}
	}
	return []Hook{h}
}

// Datapath is a loaded datapath: programs, pinned maps and the tcx links it
// manages. Close releases the process's handles and keeps everything pinned
// (traffic keeps flowing); Uninstall removes it all.
type Datapath struct {
	cfg  Config
	log  *slog.Logger
	objs cmObjects
	// mode is the resolved attach mode for new attachments (tcx or tc).
	mode AttachMode
}

// Open checks the kernel (CheckKernel), loads the programs, reusing the maps
// pinned under cfg.PinDir (creating and pinning them on first use, and
// rebuilding those whose layout changed) and switching attachments made by
// an earlier instance over to the newly loaded programs.
func Open(cfg Config, log *slog.Logger) (*Datapath, error) {
	if cfg.PinDir == "" {
		cfg.PinDir = DefaultPinDir
	}
	if cfg.CTEntries == 0 {
		cfg.CTEntries = DefaultCTEntries
	}
	if cfg.PolicyEntries == 0 {
		cfg.PolicyEntries = DefaultPolicyEntries
	}
	rel, err := kernelRelease()
	if err != nil {
		return nil, err
	}
	if err := CheckKernel(rel); err != nil {
		return nil, err
	}
	mode, err := resolveAttachMode(cfg.Attach, rel)
	if err != nil {
		return nil, err
	}
	if err := ensureBPFFS(cfg.PinDir, sysBPF, log); err != nil {
		return nil, err
	}
	d := &Datapath{cfg: cfg, log: log, mode: mode}
	for _, dir := range []string{d.mapDir(), d.linkDir()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create pin dir: %w", err)
		}
	}
	spec, err := loadCm()
	if err != nil {
		return nil, fmt.Errorf("read datapath objects: %w", err)
	}
	for _, name := range []string{cmMapCmLbCt, cmMapCmRevnat, cmMapCmLbCt6, cmMapCmRevnat6, cmMapCmPolCt, cmMapCmPolCt6} {
		spec.Maps[name].MaxEntries = cfg.CTEntries
	}
	spec.Maps[cmMapCmPolicy].MaxEntries = cfg.PolicyEntries
	if mode == AttachTC {
		// Loaded for tcx, the programs carry its expected attach type,
		// which kernels without tcx do not know.
		for _, p := range spec.Programs {
			p.AttachType = ebpf.AttachNone
		}
	}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: d.mapDir()}}
	err = spec.LoadAndAssign(&d.objs, opts)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		// A map's layout or size changed since it was pinned (an upgrade
		// or a new --bpf-ct-entries or --bpf-policy-entries): rebuild it, empty; the agent
		// reprograms it from its desired state.
		if err = d.dropIncompatiblePins(spec); err == nil {
			err = spec.LoadAndAssign(&d.objs, opts)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("load datapath objects: %w", err)
	}
	if err := d.updateConfig(func(v *cmConfigValue) { v.Flags = d.flags() }); err != nil {
		d.objs.Close()
		return nil, err
	}
	if err := d.adoptLinks(); err != nil {
		d.objs.Close()
		return nil, err
	}
	return d, nil
}

// dropIncompatiblePins removes the pin of every map of spec whose pinned
// map the spec cannot reuse.
func (d *Datapath) dropIncompatiblePins(spec *ebpf.CollectionSpec) error {
	for name, ms := range spec.Maps {
		path := filepath.Join(d.mapDir(), name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err == nil {
			err = ms.Compatible(m)
			m.Close()
		}
		if err == nil {
			continue
		}
		d.log.Warn("rebuilding pinned map with a different layout", "map", name, "reason", err)
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("remove incompatible map pin %q: %w", path, err)
		}
	}
	return nil
}

func (d *Datapath) mapDir() string { return filepath.Join(d.cfg.PinDir, "maps") }

// MapDir is the directory of the pinned maps (for tools and tests that
// read them).
func (d *Datapath) MapDir() string  { return d.mapDir() }
func (d *Datapath) linkDir() string { return filepath.Join(d.cfg.PinDir, "links") }

// Close releases this process's handles; pinned maps and links stay, so
// packets keep being forwarded with the last programmed state.
func (d *Datapath) Close() error { return d.objs.Close() }

// Uninstall closes d, then detaches its programs and removes its pins and
// pin directory (Cleanup). Call it in the network namespace of the devices
// the programs are attached to (legacy tc attachments are per namespace).
func (d *Datapath) Uninstall() error {
	d.objs.Close()
	return Cleanup(d.cfg.PinDir)
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
