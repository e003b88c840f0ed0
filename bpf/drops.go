package bpf

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// dropEventSize is sizeof(struct drop_event) in src/policy.h.
const dropEventSize = 56

// ErrBadDropEvent is returned for a record of the wrong size.
var ErrBadDropEvent = errors.New("malformed drop event")

// ReadDrops calls handle for every policy drop the programs report, until
// ctx is done (then it returns nil). Events lost while the ring buffer was
// full are counted by the kernel side (LostDrops).
func (d *Datapath) ReadDrops(ctx context.Context, handle func(datapath.Drop)) error {
	r, err := ringbuf.NewReader(d.objs.CmPolEvents)
	if err != nil {
		return fmt.Errorf("open drop events: %w", err)
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
		}
		r.Close()
	}()
	var rec ringbuf.Record
	for {
		if err := r.ReadInto(&rec); err != nil {
			if ctx.Err() != nil || errors.Is(err, ringbuf.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read drop events: %w", err)
		}
		ev, err := decodeDrop(rec.RawSample)
		if err != nil {
			d.log.Warn("skipping drop event", "error", err)
			continue
		}
		handle(ev)
	}
}

// LostDrops returns the number of drop events lost because the ring buffer
// was full (the drops themselves happened).
func (d *Datapath) LostDrops() (uint64, error) {
	var per []uint64
	if err := d.objs.CmPolLost.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("read lost drop events: %w", err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

func decodeDrop(b []byte) (datapath.Drop, error) {
	if len(b) < dropEventSize {
		return datapath.Drop{}, fmt.Errorf("%w: %d bytes", ErrBadDropEvent, len(b))
	}
	le := binary.LittleEndian
	ev := datapath.Drop{
		SrcIdentity: le.Uint32(b[0:]),
		DstIdentity: le.Uint32(b[4:]),
		SrcCluster:  le.Uint32(b[8:]),
		Rule:        le.Uint32(b[12:]),
		SrcPort:     binary.BigEndian.Uint16(b[48:]),
		DstPort:     binary.BigEndian.Uint16(b[50:]),
		Proto:       ipproto.Proto(b[52]),
		Egress:      b[53] != 0,
		Reason:      datapath.DropReason(b[54]),
	}
	switch b[55] {
	case 4:
		ev.Src = netip.AddrFrom4([4]byte(b[16:20]))
		ev.Dst = netip.AddrFrom4([4]byte(b[32:36]))
	case 6:
		ev.Src = netip.AddrFrom16([16]byte(b[16:32]))
		ev.Dst = netip.AddrFrom16([16]byte(b[32:48]))
	default:
		return datapath.Drop{}, fmt.Errorf("%w: family %d", ErrBadDropEvent, b[55])
	}
	return ev, nil
}
