package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Every attachment is recorded by a pin in links/, named <hook>_<ifindex>
// for a tcx link (the pinned link) and <hook>_<ifindex>_tc for a tc clsact
// filter (the pinned program; the filter itself cannot be pinned). The pins
// let a restarted agent switch attachments to its programs and let Cleanup
// detach them.

// tcFilterPriority and tcFilterHandle identify our cls_bpf filter on a
// device's clsact ingress. The priority is low (large number) so that a
// primary CNI's filters run first, as tcx's Tail anchor does.
const (
	tcFilterPriority = 0xc100
	tcFilterHandle   = 0xc1
)

type attachment struct {
	hook    Hook
	ifindex int
	mode    AttachMode
}

func (a attachment) pinName() string {
	n := fmt.Sprintf("%s_%d", a.hook, a.ifindex)
	if a.mode == AttachTC {
		n += "_tc"
	}
	return n
}

func parsePinName(name string) (attachment, bool) {
	parts := strings.Split(name, "_")
	if len(parts) < 2 || len(parts) > 3 {
		return attachment{}, false
	}
	n, err := strconv.Atoi(parts[1])
	if err != nil {
		return attachment{}, false
	}
	a := attachment{hook: Hook(parts[0]), ifindex: n, mode: AttachTCX}
	if len(parts) == 3 {
		if parts[2] != "tc" {
			return attachment{}, false
		}
		a.mode = AttachTC
	}
	return a, true
}

func (d *Datapath) program(h Hook) (*ebpf.Program, error) {
	switch h {
	case HookEndpoint:
		return d.objs.CmFromPod, nil
	case hookEndpointEgress:
		return d.objs.CmToPod, nil
	case HookTunnel:
		return d.objs.CmFromTunnel, nil
	case HookTunnelEgress:
		return d.objs.CmToTunnel, nil
	}
	return nil, fmt.Errorf("unknown hook %q", h)
}

// AttachMode is the mode new attachments use (tcx or tc).
func (d *Datapath) AttachMode() AttachMode { return d.mode }

// adoptLinks switches the attachments recorded by a previous instance to
// this instance's programs and drops the records of those whose device is
// gone.
func (d *Datapath) adoptLinks() error {
	entries, err := os.ReadDir(d.linkDir())
	if err != nil {
		return fmt.Errorf("read link pins: %w", err)
	}
	for _, e := range entries {
		path := filepath.Join(d.linkDir(), e.Name())
		a, ok := parsePinName(e.Name())
		prog, perr := d.program(a.hook)
		if !ok || perr != nil {
			d.log.Warn("ignoring unknown pin", "path", path)
			continue
		}
		if a.mode == AttachTC {
			if err := d.attachTC(a, prog); err != nil {
				d.log.Info("dropping record of a tc attachment whose device is gone", "path", path, "err", err)
				_ = os.Remove(path)
			}
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

// Attach runs the programs of h on ifindex (tcx or tc clsact, as AttachMode
// says) and records them under links/. The ifindex is resolved in the
// calling thread's network namespace. Attaching again to the same device
// replaces the programs (idempotent); an attachment of the other mode left
// by an earlier instance is removed.
func (d *Datapath) Attach(h Hook, ifindex int) error {
	for _, part := range h.parts() {
		if err := d.attach(part, ifindex); err != nil {
			return err
		}
	}
	return d.afterAttach(h, ifindex)
}

func (d *Datapath) attach(h Hook, ifindex int) error {
	prog, err := d.program(h)
	if err != nil {
		return err
	}
	a := attachment{hook: h, ifindex: ifindex, mode: d.mode}
	other := a
	other.mode = AttachTC
	if d.mode == AttachTC {
		other.mode = AttachTCX
	}
	if err := detachPin(filepath.Join(d.linkDir(), other.pinName()), other); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("attach %s to ifindex %d: %w", h, ifindex, err)
	}
	if d.mode == AttachTC {
		err = d.attachTC(a, prog)
	} else {
		err = d.attachTCX(a, prog)
	}
	if err != nil {
		return fmt.Errorf("attach %s to ifindex %d: %w", h, ifindex, err)
	}
	return nil
}

func (d *Datapath) attachTCX(a attachment, prog *ebpf.Program) error {
	path := filepath.Join(d.linkDir(), a.pinName())
	if l, err := link.LoadPinnedLink(path, nil); err == nil {
		err = l.Update(prog)
		if err == nil {
			l.Close()
			return nil
		}
		_ = l.Unpin()
		l.Close()
	}
	attach := ebpf.AttachTCXIngress
	if a.hook.egress() {
		attach = ebpf.AttachTCXEgress
	}
	l, err := link.AttachTCX(link.TCXOptions{
		Interface: a.ifindex,
		Program:   prog,
		Attach:    attach,
		Anchor:    link.Tail(),
	})
	if err != nil {
		return err
	}
	defer l.Close()
	if err := l.Pin(path); err != nil {
		return fmt.Errorf("pin link: %w", err)
	}
	return nil
}

// tcParent is the clsact hook (ingress or egress) of h's filter.
func tcParent(h Hook) uint32 {
	if h.egress() {
		return netlink.HANDLE_MIN_EGRESS
	}
	return netlink.HANDLE_MIN_INGRESS
}

// attachTC adds (or replaces) our cls_bpf filter on the device's clsact
// ingress (egress for the egress hooks) and pins the program as the record of the attachment.
func (d *Datapath) attachTC(a attachment, prog *ebpf.Program) error {
	lk, err := netlink.LinkByIndex(a.ifindex)
	if err != nil {
		return fmt.Errorf("find device %d: %w", a.ifindex, err)
	}
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: a.ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscReplace(qdisc); err != nil {
		return fmt.Errorf("add clsact qdisc to %s: %w", lk.Attrs().Name, err)
	}
	info, err := prog.Info()
	if err != nil {
		return fmt.Errorf("program info: %w", err)
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: a.ifindex, Parent: tcParent(a.hook),
			Handle: tcFilterHandle, Priority: tcFilterPriority, Protocol: unix.ETH_P_ALL,
		},
		Fd: prog.FD(), Name: info.Name, DirectAction: true,
	}
	if err := netlink.FilterReplace(f); err != nil {
		return fmt.Errorf("add tc filter to %s: %w", lk.Attrs().Name, err)
	}
	// Pin a duplicate: pinning the program itself again would move its
	// one pin from the record of another device.
	dup, err := prog.Clone()
	if err != nil {
		return fmt.Errorf("duplicate program: %w", err)
	}
	defer dup.Close()
	path := filepath.Join(d.linkDir(), a.pinName())
	_ = os.Remove(path)
	if err := dup.Pin(path); err != nil {
		return fmt.Errorf("pin program: %w", err)
	}
	return nil
}

func (d *Datapath) afterAttach(h Hook, ifindex int) error {
	if h != HookTunnel {
		return nil
	}
	return d.updateConfig(func(v *cmConfigValue) { v.TunnelIfindex = uint32(ifindex) })
}

// cmFlagCoexist and cmFlagCoexistWorld4/6 are CM_F_COEXIST and
// CM_F_COEXIST_WORLD4/6 of datapath.h.
const (
	cmFlagCoexist       = 0x1
	cmFlagCoexistWorld4 = 0x2
	cmFlagCoexistWorld6 = 0x4
)

// SetCoexistWorld turns on (or off), per family, the world decision of
// coexistence mode: a packet the node forwards to a pod from an address
// without any ipcache entry is world, decided by the pod's ingress policy.
// Turn a family on only once the ipcache holds the own cluster's ranges of
// that family as world entries (dpsync's --cluster-cidrs): a source without
// an entry must lie outside the cluster. Open turns both off (the flags
// follow the programmed ranges, never the other way round); it has no
// effect outside coexistence mode.
func (d *Datapath) SetCoexistWorld(v4, v6 bool) error {
	if !d.cfg.Coexist {
		return nil
	}
	return d.updateConfig(func(v *cmConfigValue) {
		v.Flags &^= cmFlagCoexistWorld4 | cmFlagCoexistWorld6
		if v4 {
			v.Flags |= cmFlagCoexistWorld4
		}
		if v6 {
			v.Flags |= cmFlagCoexistWorld6
		}
	})
}

func (d *Datapath) flags() uint32 {
	if d.cfg.Coexist {
		return cmFlagCoexist
	}
	return 0
}

// updateConfig changes the node-wide settings in cm_config with f.
func (d *Datapath) updateConfig(f func(*cmConfigValue)) error {
	var v cmConfigValue
	if err := d.objs.CmConfig.Lookup(uint32(0), &v); err != nil {
		return fmt.Errorf("read datapath config: %w", err)
	}
	f(&v)
	if err := d.objs.CmConfig.Update(uint32(0), &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write datapath config: %w", err)
	}
	return nil
}

// Detach removes the programs of h from ifindex and their records. It
// fails with ErrNotAttached when h's main program (its first part) was not
// attached; a missing egress half of HookEndpoint (attached by an earlier
// version) is no error.
func (d *Datapath) Detach(h Hook, ifindex int) error {
	found := false
	for i, part := range h.parts() {
		for _, mode := range []AttachMode{AttachTCX, AttachTC} {
			a := attachment{hook: part, ifindex: ifindex, mode: mode}
			err := detachPin(filepath.Join(d.linkDir(), a.pinName()), a)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("detach %s from ifindex %d: %w", part, ifindex, err)
			}
			found = found || i == 0
		}
	}
	if !found {
		return fmt.Errorf("detach %s from ifindex %d: %w", h, ifindex, ErrNotAttached)
	}
	if h == HookTunnel {
		_ = d.updateConfig(func(v *cmConfigValue) { v.TunnelIfindex = 0 })
	}
	return nil
}

// detachPin undoes the attachment recorded at path: a tcx link is unpinned
// (closing the last reference detaches it); a tc filter is deleted from its
// device in the calling thread's network namespace (if the device is still
// there) and the program pin removed. It returns an error wrapping
// os.ErrNotExist when there is no such record.
func detachPin(path string, a attachment) error {
	if _, err := os.Stat(path); err != nil {
		return err
	}
	if a.mode == AttachTCX {
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			// Not a link (or unreadable): the record alone goes.
			return os.Remove(path)
		}
		defer l.Close()
		return l.Unpin()
	}
	if err := deleteTCFilter(a.ifindex, tcParent(a.hook)); err != nil {
		return err
	}
	return os.Remove(path)
}

// deleteTCFilter deletes our cls_bpf filter from ifindex's clsact hook
// parent; a missing device or filter is not an error. Only a filter with our
// handle, priority and a program name of ours is deleted.
func deleteTCFilter(ifindex int, parent uint32) error {
	lk, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return nil // the device is gone, and its filters with it
	}
	filters, err := netlink.FilterList(lk, parent)
	if err != nil {
		return nil // no clsact qdisc
	}
	for _, f := range filters {
		bf, ok := f.(*netlink.BpfFilter)
		if !ok || bf.Handle != tcFilterHandle || bf.Priority != tcFilterPriority || !strings.HasPrefix(bf.Name, "cm_") {
			continue
		}
		if err := netlink.FilterDel(bf); err != nil {
			return fmt.Errorf("delete tc filter of %s: %w", lk.Attrs().Name, err)
		}
	}
	return nil
}
