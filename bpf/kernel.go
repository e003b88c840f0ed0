package bpf

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// MinKernel is the oldest Linux release the datapath runs on: it needs
// bpf_redirect_peer (5.10) and, below 6.6, attaches with tc clsact.
const MinKernel = "5.10"

// tcxKernel is the first release with tcx attachments.
const tcxKernel = "6.6"

// ErrKernelTooOld is returned by Open on a kernel older than MinKernel.
var ErrKernelTooOld = errors.New("kernel too old")

// ErrAttachUnsupported is returned by Open when the attach mode asked for is
// not available on this kernel.
var ErrAttachUnsupported = errors.New("attach mode not supported by this kernel")

// AttachMode says how programs are attached to devices.
type AttachMode string

// The attach modes.
const (
	// AttachAuto picks tcx from Linux 6.6 and tc clsact before.
	AttachAuto AttachMode = "auto"
	// AttachTCX attaches with tcx links, pinned under links/.
	AttachTCX AttachMode = "tcx"
	// AttachTC attaches cls_bpf filters to a clsact qdisc (legacy tc).
	AttachTC AttachMode = "tc"
)

func kernelRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// CheckKernel fails with ErrKernelTooOld when release (as uname -r prints
// it) is older than MinKernel or cannot be read.
func CheckKernel(release string) error {
	ok, err := atLeast(release, MinKernel)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: Linux %s, clustermesh-agent needs %s or newer (bpf_redirect_peer, tc clsact)", ErrKernelTooOld, release, MinKernel)
	}
	return nil
}

func resolveAttachMode(m AttachMode, release string) (AttachMode, error) {
	tcx, err := atLeast(release, tcxKernel)
	if err != nil {
		return "", err
	}
	switch m {
	case AttachAuto, "":
		if tcx {
			return AttachTCX, nil
		}
		return AttachTC, nil
	case AttachTCX:
		if !tcx {
			return "", fmt.Errorf("%w: tcx needs Linux %s, this is %s (use --bpf-attach=tc or auto)", ErrAttachUnsupported, tcxKernel, release)
		}
		return AttachTCX, nil
	case AttachTC:
		return AttachTC, nil
	}
	return "", fmt.Errorf("unknown attach mode %q", m)
}

// atLeast reports whether release is at least min (both "major.minor...").
func atLeast(release, min string) (bool, error) {
	r, err := majorMinor(release)
	if err != nil {
		return false, err
	}
	m, err := majorMinor(min)
	if err != nil {
		return false, err
	}
	return r[0] > m[0] || r[0] == m[0] && r[1] >= m[1], nil
}

func majorMinor(release string) ([2]int, error) {
	var out [2]int
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return out, fmt.Errorf("parse kernel release %q: want major.minor", release)
	}
	for i := range 2 {
		digits := parts[i]
		if j := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' }); j >= 0 {
			digits = digits[:j]
		}
		n, err := strconv.Atoi(digits)
		if err != nil {
			return out, fmt.Errorf("parse kernel release %q: %w", release, err)
		}
		out[i] = n
	}
	return out, nil
}
