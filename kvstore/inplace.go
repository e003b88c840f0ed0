package kvstore

import (
	"context"
	"fmt"
	"unicode/utf8"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the "proto" codec pageCodec delegates to
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// A list page (etcd's Range RPC) and a watch response are decoded in place:
// the message's bytes are copied out of gRPC's receive buffers once, and
// every key and value is a slice of that copy. The generated etcdserverpb
// code (protobuf-go) allocates a message and two byte slices per key and
// copies every key and value a second time (bench/README.md, "etcd's
// responses decoded in place").

// rangePage is the part of a RangeResponse a listing reads.
type rangePage struct {
	Revision  int64 // of the header
	ClusterID uint64
	More      bool
	Count     int64
	Kvs       []pageKV
}

// pageKV is one key of a page; Key and Value alias the page's buffer.
type pageKV struct {
	Key, Value  []byte
	ModRevision int64
}

// watchResponse is the part of a WatchResponse a watch reads.
type watchResponse struct {
	ClusterID       uint64 // of the header
	Created         bool
	Canceled        bool
	CompactRevision int64
	CancelReason    string
	Events          []watchEvent
}

// watchEvent is one event of a watch response; its Key and Value alias the
// response's buffer.
type watchEvent struct {
	Type mvccpb.Event_EventType // PUT or DELETE
	pageKV
}

// Field numbers of the messages read here (etcd api/v3 rpc.proto, kv.proto).
const (
	rangeHeader, rangeKvs, rangeMore, rangeCount = 1, 2, 3, 4
	headerClusterID, headerRevision              = 1, 3
	kvKey, kvModRevision, kvValue                = 1, 3, 5

	watchHeader, watchCreated, watchCanceled, watchCompactRevision, watchCancelReason, watchEvents = 1, 3, 4, 5, 6, 11
	eventType, eventKv, eventPrevKv                                                                = 1, 2, 3
)

// unmarshal decodes a RangeResponse from b, which the page keeps. As
// protobuf-go does, a field whose wire type is not its declared one is
// skipped as unknown, and of a field given twice the last counts.
func (p *rangePage) unmarshal(b []byte) error {
	*p = rangePage{}
	n := 0 // keys, counted first to size Kvs once
	for rest := b; len(rest) > 0; {
		f, err := nextField(&rest)
		if err != nil {
			return err
		}
		if f.is(rangeKvs, protowire.BytesType) {
			n++
		}
	}
	p.Kvs = make([]pageKV, 0, n)
	for len(b) > 0 {
		f, _ := nextField(&b) // checked above
		switch {
		case f.is(rangeHeader, protowire.BytesType):
			if err := unmarshalHeader(f.m, &p.ClusterID, &p.Revision); err != nil {
				return err
			}
		case f.is(rangeKvs, protowire.BytesType):
			var kv pageKV
			if err := kv.unmarshal(f.m); err != nil {
				return err
			}
			p.Kvs = append(p.Kvs, kv)
		case f.is(rangeMore, protowire.VarintType):
			p.More = f.v != 0
		case f.is(rangeCount, protowire.VarintType):
			p.Count = int64(f.v)
		}
	}
	return nil
}

// unmarshalHeader reads a ResponseHeader's cluster ID and revision (the
// fields of a header given in parts merge, as in protobuf-go).
func unmarshalHeader(b []byte, clusterID *uint64, revision *int64) error {
	for len(b) > 0 {
		f, err := nextField(&b)
		if err != nil {
			return err
		}
		switch {
		case f.is(headerClusterID, protowire.VarintType):
			*clusterID = f.v
		case f.is(headerRevision, protowire.VarintType):
			*revision = int64(f.v)
		}
	}
	return nil
}

// unmarshal merges the KeyValue in b into kv.
func (kv *pageKV) unmarshal(b []byte) error {
	for len(b) > 0 {
		f, err := nextField(&b)
		if err != nil {
			return err
		}
		switch {
		case f.is(kvKey, protowire.BytesType):
			kv.Key = f.m
		case f.is(kvValue, protowire.BytesType):
			kv.Value = f.m
		case f.is(kvModRevision, protowire.VarintType):
			kv.ModRevision = int64(f.v)
		}
	}
	return nil
}

// unmarshal decodes a WatchResponse from b, which w keeps; w's Events
// slice is reused.
func (w *watchResponse) unmarshal(b []byte) error {
	*w = watchResponse{Events: w.Events[:0]}
	var revision int64 // the header's, not read
	for len(b) > 0 {
		f, err := nextField(&b)
		if err != nil {
			return err
		}
		switch {
		case f.is(watchHeader, protowire.BytesType):
			if err := unmarshalHeader(f.m, &w.ClusterID, &revision); err != nil {
				return err
			}
		case f.is(watchCreated, protowire.VarintType):
			w.Created = f.v != 0
		case f.is(watchCanceled, protowire.VarintType):
			w.Canceled = f.v != 0
		case f.is(watchCompactRevision, protowire.VarintType):
			w.CompactRevision = int64(f.v)
		case f.is(watchCancelReason, protowire.BytesType):
			if !utf8.Valid(f.m) { // a proto3 string, as protobuf-go checks
				return fmt.Errorf("etcd response: cancel reason is not UTF-8")
			}
			w.CancelReason = string(f.m)
		case f.is(watchEvents, protowire.BytesType):
			var ev watchEvent
			if err := ev.unmarshal(f.m); err != nil {
				return err
			}
			w.Events = append(w.Events, ev)
		}
	}
	return nil
}

// unmarshal merges the Event in b into ev.
func (ev *watchEvent) unmarshal(b []byte) error {
	for len(b) > 0 {
		f, err := nextField(&b)
		if err != nil {
			return err
		}
		switch {
		case f.is(eventType, protowire.VarintType):
			ev.Type = mvccpb.Event_EventType(f.v)
		case f.is(eventKv, protowire.BytesType):
			if err := ev.pageKV.unmarshal(f.m); err != nil {
				return err
			}
		case f.is(eventPrevKv, protowire.BytesType): // never asked for; checked as protobuf-go does
			if err := new(pageKV).unmarshal(f.m); err != nil {
				return err
			}
		}
	}
	return nil
}

// field is one field of a message: a varint's value, or a length-delimited
// field's bytes (a slice of the message); other wire types carry neither.
type field struct {
	num protowire.Number
	typ protowire.Type
	v   uint64
	m   []byte
}

func (f field) is(num protowire.Number, typ protowire.Type) bool { return f.num == num && f.typ == typ }

// nextField consumes the first field of *b.
func nextField(b *[]byte) (field, error) {
	num, typ, l := protowire.ConsumeTag(*b)
	if l < 0 {
		return field{}, fmt.Errorf("etcd response: %w", protowire.ParseError(l))
	}
	if !num.IsValid() {
		return field{}, fmt.Errorf("etcd response: invalid field number %d", num)
	}
	rest := (*b)[l:]
	f := field{num: num, typ: typ}
	switch typ {
	case protowire.VarintType:
		f.v, l = protowire.ConsumeVarint(rest)
	case protowire.BytesType:
		f.m, l = protowire.ConsumeBytes(rest)
	default:
		l = protowire.ConsumeFieldValue(num, typ, rest)
	}
	if l < 0 {
		return field{}, fmt.Errorf("etcd response: field %d: %w", num, protowire.ParseError(l))
	}
	*b = rest[l:]
	return f, nil
}

// inPlace is a message decoded in place from its bytes, which it keeps.
type inPlace interface{ unmarshal(b []byte) error }

// inPlaceCodec decodes the messages that are inPlace and leaves every
// other message to gRPC's proto codec, whose content subtype it is on the
// wire.
type inPlaceCodec struct{ proto encoding.CodecV2 }

var etcdCodec = inPlaceCodec{proto: encoding.GetCodecV2("proto")}

func (c inPlaceCodec) Name() string { return c.proto.Name() }

func (c inPlaceCodec) Marshal(v any) (mem.BufferSlice, error) { return c.proto.Marshal(v) }

func (c inPlaceCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if m, ok := v.(inPlace); ok {
		return m.unmarshal(data.Materialize())
	}
	return c.proto.Unmarshal(data, v)
}

// inPlaceCall are the options of a call whose answer is decoded in place.
var inPlaceCall = []grpc.CallOption{grpc.ForceCodecV2(etcdCodec), grpc.WaitForReady(true), grpc.MaxCallRecvMsgSize(maxResponse)}

// getPage reads the keys from key up to end, at most limit of them, at
// revision rev (0: the newest), as clientv3's Get would, with its errors.
func (c *Client) getPage(ctx context.Context, key, end string, limit, rev int64) (*rangePage, error) {
	req := &pb.RangeRequest{Key: []byte(key), RangeEnd: []byte(end), Limit: limit, Revision: rev}
	var p rangePage
	err := c.etcd.ActiveConnection().Invoke(ctx, pb.KV_Range_FullMethodName, req, &p, inPlaceCall...)
	if err != nil {
		return nil, clientv3.ContextError(ctx, err)
	}
	return &p, nil
}
