package kvstore

import (
	"bytes"
	"fmt"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// checkPage decodes b with the page decoder and with etcd's generated code
// (protobuf-go) and fails unless both accept it and read the same, or both
// refuse it.
func checkPage(t *testing.T, b []byte) {
	t.Helper()
	var want pb.RangeResponse
	wantErr := proto.Unmarshal(b, &want)
	var got rangePage
	err := got.unmarshal(b)
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("page decoder error %v, protobuf-go error %v\nbytes %x", err, wantErr, b)
	}
	if err != nil {
		return
	}
	if got.Revision != want.GetHeader().GetRevision() || got.ClusterID != want.GetHeader().GetClusterId() ||
		got.More != want.More || got.Count != want.Count || len(got.Kvs) != len(want.Kvs) {
		t.Fatalf("page rev %d cluster %x more %v count %d keys %d, protobuf-go %d %x %v %d %d\nbytes %x",
			got.Revision, got.ClusterID, got.More, got.Count, len(got.Kvs),
			want.GetHeader().GetRevision(), want.GetHeader().GetClusterId(), want.More, want.Count, len(want.Kvs), b)
	}
	for i, kv := range got.Kvs {
		w := want.Kvs[i]
		if !bytes.Equal(kv.Key, w.Key) || !bytes.Equal(kv.Value, w.Value) || kv.ModRevision != w.ModRevision {
			t.Fatalf("key %d: %q=%q@%d, protobuf-go %q=%q@%d", i, kv.Key, kv.Value, kv.ModRevision, w.Key, w.Value, w.ModRevision)
		}
	}
}

func marshal(t testing.TB, m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testRange(n int) *pb.RangeResponse {
	r := &pb.RangeResponse{Header: &pb.ResponseHeader{ClusterId: 0xfeed, MemberId: 7, Revision: 300_000, RaftTerm: 3}, More: true, Count: 250_000}
	for i := range n {
		r.Kvs = append(r.Kvs, &mvccpb.KeyValue{
			Key:            fmt.Appendf(nil, "cilium/state/ip/v1/default/10.%d.%d.%d", i>>16, i>>8&255, i&255),
			Value:          fmt.Appendf(nil, `{"IP":"10.%d.%d.%d","ID":%d,"HostIP":"192.168.%d.%d"}`, i>>16, i>>8&255, i&255, 100_000+i%1000, i>>8&255, i&255),
			CreateRevision: int64(i + 1), ModRevision: int64(i + 2), Version: 3, Lease: 0x5eed,
		})
	}
	return r
}

func TestRangePageDecode(t *testing.T) {
	full := marshal(t, testRange(3))
	// Fields in an order and form protobuf-go does not write, which etcd
	// (or a proxy) may: unknown fields, a known number with another wire
	// type, a field given twice, the header split in two.
	var odd []byte
	odd = protowire.AppendTag(odd, 99, protowire.Fixed64Type)
	odd = protowire.AppendFixed64(odd, 1)
	odd = protowire.AppendTag(odd, rangeKvs, protowire.VarintType) // not a message: unknown
	odd = protowire.AppendVarint(odd, 5)
	odd = protowire.AppendTag(odd, rangeCount, protowire.VarintType)
	odd = protowire.AppendVarint(odd, 1)
	odd = protowire.AppendTag(odd, rangeCount, protowire.VarintType) // the last counts
	odd = protowire.AppendVarint(odd, 2)
	odd = protowire.AppendTag(odd, rangeHeader, protowire.BytesType)
	odd = protowire.AppendBytes(odd, marshal(t, &pb.ResponseHeader{Revision: 9}))
	odd = protowire.AppendTag(odd, rangeHeader, protowire.BytesType) // merged with the first
	odd = protowire.AppendBytes(odd, marshal(t, &pb.ResponseHeader{ClusterId: 4}))
	kv := marshal(t, &mvccpb.KeyValue{Key: []byte("k"), Value: []byte("v"), ModRevision: 8})
	kv = protowire.AppendTag(kv, kvValue, protowire.VarintType) // unknown, the value stays
	kv = protowire.AppendVarint(kv, 1)
	kv = protowire.AppendTag(kv, 1000, protowire.StartGroupType)
	kv = protowire.AppendTag(kv, 1000, protowire.EndGroupType)
	odd = protowire.AppendTag(odd, rangeKvs, protowire.BytesType)
	odd = protowire.AppendBytes(odd, kv)
	odd = protowire.AppendTag(odd, rangeKvs, protowire.BytesType) // an empty key
	odd = protowire.AppendBytes(odd, nil)

	for name, b := range map[string][]byte{
		"empty":                   nil,
		"header only":             marshal(t, &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: 1}}),
		"keys":                    full,
		"unknown and odd fields":  odd,
		"truncated":               full[:len(full)-3],
		"length past the end":     protowire.AppendVarint(protowire.AppendTag(nil, rangeKvs, protowire.BytesType), 100),
		"bad nested key":          protowire.AppendBytes(protowire.AppendTag(nil, rangeKvs, protowire.BytesType), []byte{0x0a, 0x05, 'a'}),
		"field number 0":          {0x00, 0x01},
		"unterminated group":      protowire.AppendTag(nil, 5, protowire.StartGroupType),
		"varint over ten bytes":   append(protowire.AppendTag(nil, rangeCount, protowire.VarintType), bytes.Repeat([]byte{0xff}, 11)...),
		"header with bad varint":  protowire.AppendBytes(protowire.AppendTag(nil, rangeHeader, protowire.BytesType), []byte{0x18, 0xff}),
		"truncated fixed32 field": protowire.AppendTag(nil, 7, protowire.Fixed32Type),
	} {
		t.Run(name, func(t *testing.T) { checkPage(t, b) })
	}

	var p rangePage
	if err := p.unmarshal(full); err != nil {
		t.Fatal(err)
	}
	if p.Revision != 300_000 || p.ClusterID != 0xfeed || !p.More || p.Count != 250_000 || len(p.Kvs) != 3 ||
		string(p.Kvs[2].Key) != "cilium/state/ip/v1/default/10.0.0.2" || p.Kvs[2].ModRevision != 4 {
		t.Fatalf("page %+v", p)
	}
	if !bytes.Contains(full, p.Kvs[1].Value) || &p.Kvs[1].Value[0] != &full[bytes.Index(full, p.Kvs[1].Value)] {
		t.Fatal("a value is not a slice of the page it came in")
	}
}

// FuzzRangePage: the page decoder accepts exactly what protobuf-go accepts
// as a RangeResponse and reads the same from it.
func FuzzRangePage(f *testing.F) {
	f.Add(marshal(f, testRange(2)))
	f.Add(marshal(f, &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: 1}, More: true}))
	f.Fuzz(func(t *testing.T, b []byte) { checkPage(t, b) })
}

// checkWatch is checkPage for a watch response.
func checkWatch(t *testing.T, b []byte) {
	t.Helper()
	var want pb.WatchResponse
	wantErr := proto.Unmarshal(b, &want)
	got := watchResponse{Events: make([]watchEvent, 1)} // a reused slice holds nothing of the last response
	err := got.unmarshal(b)
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("watch decoder error %v, protobuf-go error %v\nbytes %x", err, wantErr, b)
	}
	if err != nil {
		return
	}
	if got.ClusterID != want.GetHeader().GetClusterId() || got.Created != want.Created || got.Canceled != want.Canceled ||
		got.CompactRevision != want.CompactRevision || got.CancelReason != want.CancelReason || len(got.Events) != len(want.Events) {
		t.Fatalf("watch response %+v, protobuf-go %v\nbytes %x", got, &want, b)
	}
	for i, ev := range got.Events {
		w := want.Events[i]
		if ev.Type != w.Type || !bytes.Equal(ev.Key, w.GetKv().GetKey()) || !bytes.Equal(ev.Value, w.GetKv().GetValue()) || ev.ModRevision != w.GetKv().GetModRevision() {
			t.Fatalf("event %d: %+v, protobuf-go %v", i, ev, w)
		}
	}
}

func testWatch() *pb.WatchResponse {
	return &pb.WatchResponse{Header: &pb.ResponseHeader{ClusterId: 0xfeed, Revision: 12}, WatchId: 1, Events: []*mvccpb.Event{
		{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte("cilium/state/ip/v1/default/10.0.0.1"), Value: []byte(`{"IP":"10.0.0.1"}`), ModRevision: 11}, PrevKv: &mvccpb.KeyValue{Key: []byte("p")}},
		{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte("cilium/state/ip/v1/default/10.0.0.2"), ModRevision: 12}},
	}}
}

func TestWatchResponseDecode(t *testing.T) {
	events := marshal(t, testWatch())
	var odd []byte
	odd = protowire.AppendTag(odd, watchEvents, protowire.BytesType) // an event of an unknown type, its kv in two parts
	ev := protowire.AppendVarint(protowire.AppendTag(nil, eventType, protowire.VarintType), 7)
	ev = protowire.AppendBytes(protowire.AppendTag(ev, eventKv, protowire.BytesType), marshal(t, &mvccpb.KeyValue{Key: []byte("k")}))
	ev = protowire.AppendBytes(protowire.AppendTag(ev, eventKv, protowire.BytesType), marshal(t, &mvccpb.KeyValue{Value: []byte("v")}))
	odd = protowire.AppendBytes(odd, ev)
	for name, b := range map[string][]byte{
		"empty":                   nil,
		"events":                  events,
		"created":                 marshal(t, &pb.WatchResponse{Header: &pb.ResponseHeader{ClusterId: 3}, Created: true}),
		"canceled":                marshal(t, &pb.WatchResponse{Canceled: true, CompactRevision: 40, CancelReason: "mvcc: required revision has been compacted"}),
		"odd":                     odd,
		"cancel reason not UTF-8": protowire.AppendBytes(protowire.AppendTag(nil, watchCancelReason, protowire.BytesType), []byte{0xff}),
		"truncated":               events[:len(events)-2],
	} {
		t.Run(name, func(t *testing.T) { checkWatch(t, b) })
	}
}

// FuzzWatchResponse: the watch decoder accepts exactly what protobuf-go
// accepts as a WatchResponse and reads the same from it.
func FuzzWatchResponse(f *testing.F) {
	f.Add(marshal(f, testWatch()))
	f.Add(marshal(f, &pb.WatchResponse{Canceled: true, CompactRevision: 40, CancelReason: "compacted"}))
	f.Fuzz(func(t *testing.T, b []byte) { checkWatch(t, b) })
}

// BenchmarkDecode compares decoding in place (after the one copy out of
// gRPC's buffers, as the codec does) with etcd's generated code, for a list
// page of 10,000 ipcache keys and a watch response of one event.
func BenchmarkDecode(b *testing.B) {
	one := testWatch()
	one.Events = one.Events[:1]
	for _, c := range []struct {
		name    string
		bytes   []byte
		inPlace inPlace
		proto   proto.Message
	}{
		{"page", marshal(b, testRange(10_000)), &rangePage{}, &pb.RangeResponse{}},
		{"watch", marshal(b, one), &watchResponse{}, &pb.WatchResponse{}},
	} {
		b.Run(c.name+"/in-place", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := c.inPlace.unmarshal(bytes.Clone(c.bytes)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.name+"/protobuf-go", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				proto.Reset(c.proto)
				if err := proto.Unmarshal(c.bytes, c.proto); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
