package kvstore

import (
	"context"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the "proto" codec pageCodec delegates to
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// A list page is read with etcd's Range RPC and decoded in place: the
// page's bytes are copied out of gRPC's receive buffers once, and every
// key and value is a slice of that copy. The generated etcdserverpb code
// (protobuf-go) allocates a message and two byte slices per key and copies
// every key and value a second time (bench/README.md, "A list page decoded
// in place").

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

// RangeResponse, ResponseHeader and KeyValue field numbers (etcd api/v3
// rpc.proto, kv.proto).
const (
	rangeHeader, rangeKvs, rangeMore, rangeCount = 1, 2, 3, 4
	headerClusterID, headerRevision              = 1, 3
	kvKey, kvModRevision, kvValue                = 1, 3, 5
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
			for m := f.m; len(m) > 0; {
				h, err := nextField(&m)
				if err != nil {
					return err
				}
				switch {
				case h.is(headerClusterID, protowire.VarintType):
					p.ClusterID = h.v
				case h.is(headerRevision, protowire.VarintType):
					p.Revision = int64(h.v)
				}
			}
		case f.is(rangeKvs, protowire.BytesType):
			var kv pageKV
			for m := f.m; len(m) > 0; {
				k, err := nextField(&m)
				if err != nil {
					return err
				}
				switch {
				case k.is(kvKey, protowire.BytesType):
					kv.Key = k.m
				case k.is(kvValue, protowire.BytesType):
					kv.Value = k.m
				case k.is(kvModRevision, protowire.VarintType):
					kv.ModRevision = int64(k.v)
				}
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
		return field{}, fmt.Errorf("range response: %w", protowire.ParseError(l))
	}
	if !num.IsValid() {
		return field{}, fmt.Errorf("range response: invalid field number %d", num)
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
		return field{}, fmt.Errorf("range response: field %d: %w", num, protowire.ParseError(l))
	}
	*b = rest[l:]
	return f, nil
}

// pageCodec decodes a *rangePage in place and leaves every other message
// to gRPC's proto codec, whose content subtype it is on the wire.
type pageCodec struct{ proto encoding.CodecV2 }

var rangeCodec = pageCodec{proto: encoding.GetCodecV2("proto")}

func (c pageCodec) Name() string { return c.proto.Name() }

func (c pageCodec) Marshal(v any) (mem.BufferSlice, error) { return c.proto.Marshal(v) }

func (c pageCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if p, ok := v.(*rangePage); ok {
		return p.unmarshal(data.Materialize())
	}
	return c.proto.Unmarshal(data, v)
}

// rangeMethod is etcd's Range RPC.
const rangeMethod = "/etcdserverpb.KV/Range"

// getPage reads the keys from key up to end, at most limit of them, at
// revision rev (0: the newest), as clientv3's Get would, with its errors.
func (c *Client) getPage(ctx context.Context, key, end string, limit, rev int64) (*rangePage, error) {
	req := &pb.RangeRequest{Key: []byte(key), RangeEnd: []byte(end), Limit: limit, Revision: rev}
	var p rangePage
	err := c.etcd.ActiveConnection().Invoke(ctx, rangeMethod, req, &p,
		grpc.ForceCodecV2(rangeCodec), grpc.WaitForReady(true), grpc.MaxCallRecvMsgSize(maxResponse))
	if err != nil {
		return nil, clientv3.ContextError(ctx, err)
	}
	return &p, nil
}
