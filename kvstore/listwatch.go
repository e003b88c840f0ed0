package kvstore

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/internal/backoff"
)

// EventKind says what an Event reports.
type EventKind int

const (
	// EventUpsert: the key was created or changed (or is listed).
	EventUpsert EventKind = iota
	// EventDelete: the key was deleted, or vanished while the watch was
	// interrupted (a synthetic delete after a relist).
	EventDelete
	// EventListDone: a (re)list is complete; every key not reported since
	// the previous list has been deleted.
	EventListDone
)

func (k EventKind) String() string {
	switch k {
	case EventUpsert:
		return "upsert"
	case EventDelete:
		return "delete"
	case EventListDone:
		return "list-done"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is a change of one key under a watched prefix.
type Event struct {
	Kind EventKind
	Key  string
	// Value is the new value of an upsert. A listed value is a slice of
	// its page (decoded in place): a handler that keeps it copies it, else
	// the whole page stays in memory as long as the value does.
	Value []byte
	// Revision is the modification revision of an upsert, the revision of
	// a delete (the list revision for synthetic deletes) or the list
	// revision of EventListDone.
	Revision int64
	// Total is, for the upserts of a (re)list, the number of keys the
	// listing holds (etcd's count of the whole range, from its first page),
	// so that a handler can size its tables once; 0 for watch events.
	Total int64
	// State is, for an upsert, what ListWatch remembers of the key: a
	// handler that is its own KeyIndex (option Index) records it.
	State KeyState
}

// Reasons for a relist, reported in logs and errors.
var (
	ErrClusterIDChanged = errors.New("etcd cluster ID changed")
	ErrRevisionRewound  = errors.New("etcd revision went backwards")
	ErrWatchClosed      = errors.New("watch channel closed")
)

// KeyState is what ListWatch remembers of a key the handler holds.
type KeyState struct {
	Sum uint64 // hash of the value the handler was given
	Gen uint32 // number of the list that last saw the key
}

// KeyIndex is the handler's own table of the keys it holds, with the
// KeyState of each (option Index): then each key is held once, not also in
// a map of ListWatch's. The handler records Event.State with every upsert
// it takes, and an upsert of a listing (Total > 0) whose State.Sum equals
// the one it holds for the key, recorded in this ListWatch, is an unchanged
// value: the handler records the new State.Gen and reports nothing. ListWatch
// calls the index from the handler's goroutine only.
type KeyIndex interface {
	// State returns the state of a key the handler holds from this
	// ListWatch (not keys that an earlier ListWatch delivered).
	State(key string) (KeyState, bool)
	// Range calls f with every such key and its state until f returns
	// false; f does not call into the index or the handler.
	Range(f func(key string, st KeyState) bool)
}

// mapIndex is ListWatch's own index when the handler gives none.
type mapIndex map[string]KeyState

func (m mapIndex) State(key string) (KeyState, bool) { st, ok := m[key]; return st, ok }
func (m mapIndex) Range(f func(key string, st KeyState) bool) {
	for k, st := range m {
		if !f(k, st) {
			return
		}
	}
}

type listWatch struct {
	c      *Client
	prefix string
	handle func(Event)
	// rejected, if set, reports whether the handler rejected a key.
	rejected func(key string) bool

	known     KeyIndex     // keys the handler holds as present
	own       mapIndex     // known, when it is ListWatch's own (no Index option)
	seed      maphash.Seed // of the value hashes in known
	gen       uint32
	clusterID uint64 // of the etcd cluster the last list came from
	// lastRev is the highest revision seen; written by ListWatch's
	// goroutine, read by the watch's cluster check.
	lastRev atomic.Int64
}

// ListWatch lists prefix in pages of ListPageSize keys, then watches it from
// the list revision + 1, calling handle for every change, in order, from the
// calling goroutine. After every (re)list it emits EventDelete for the keys
// that were reported before but are no longer there, and then EventListDone.
// It relists when the watch revision was compacted, etcd canceled the
// watch, the etcd cluster ID changed or the revision went backwards (a
// restored etcd); a watch whose stream broke (connection lost, no leader)
// is resumed from the last revision seen instead;
// keys whose value is unchanged since the handler last saw it are not
// reported again. Values are compared, not modification revisions: an etcd
// replaced by one whose revisions were refilled past the old ones may hold
// another value at the same revision. Failures are retried with a
// capped exponential backoff with jitter, restarted only after the watch
// worked for a while, and recorded for Status.
// ListWatch blocks until ctx is done and then returns nil.
func (c *Client) ListWatch(ctx context.Context, prefix string, handle func(Event), opts ...ListWatchOption) error {
	var o listWatchOptions
	for _, opt := range opts {
		opt(&o)
	}
	lw := &listWatch{c: c, prefix: prefix, handle: handle, rejected: o.rejected, known: o.index, seed: maphash.MakeSeed()}
	if lw.known == nil {
		lw.own = mapIndex{}
		lw.known = lw.own
	}
	// A successful list alone does not restart the count: a watch that
	// fails right after every list still backs off.
	retry := backoff.New(listWatchBackoff, clock.RealClock{})
	var reason error // why the next list is a relist; nil before the first
	resume := false  // the watch stream broke: watch again from the last revision
	for {
		var err error
		if resume {
			err = lw.watch(ctx, retry)
		} else {
			if reason != nil && o.beforeRelist != nil {
				if err = o.beforeRelist(ctx, reason); err != nil {
					err = fmt.Errorf("before relist: %w", err)
				}
			}
			if err == nil {
				if err = lw.list(ctx); err == nil {
					retry.Success()
					err = lw.watch(ctx, retry)
				}
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		resume = lw.gen > 0 && errors.Is(err, errWatchInterrupted)
		if lw.gen > 0 && !resume {
			reason = err
		}
		c.recordErr(fmt.Errorf("list-watch %s: %w", prefix, err))
		wait := retry.Failure()
		c.log.Info("watch ended", "prefix", prefix, "reason", err, "resume", resume, "failures", retry.Failures(), "retry_in", wait)
		if err := sleepCtx(ctx, wait); err != nil {
			return nil
		}
	}
}

// ListWatchOption tunes ListWatch.
type ListWatchOption func(*listWatchOptions)

type listWatchOptions struct {
	beforeRelist func(ctx context.Context, reason error) error
	rejected     func(key string) bool
	index        KeyIndex
}

// Index makes the handler's own table of its keys, idx, ListWatch's index
// of them (see KeyIndex) instead of a map of ListWatch's. Rejected is then
// not needed: a key the handler does not take is not in its table.
func Index(idx KeyIndex) ListWatchOption {
	return func(o *listWatchOptions) { o.index = idx }
}

// Rejected makes ListWatch ask f, after every upsert it hands the handler,
// whether the handler rejected the key (an invalid value, or one over a
// limit). A rejected key is not remembered: what a remote writes under
// keys nobody holds costs no memory here. Its deletion is not reported
// and a relist delivers it again.
func Rejected(f func(key string) bool) ListWatchOption {
	return func(o *listWatchOptions) { o.rejected = f }
}

// BeforeRelist makes ListWatch call f before every relist (not before the
// first list) with the reason of the relist, and relist only once f
// returns nil; an error from f counts as a failed list and is retried.
// The read side uses it to wait for the sync canary of a replaced etcd
// before its relist turns every missing key into a synthetic delete.
func BeforeRelist(f func(ctx context.Context, reason error) error) ListWatchOption {
	return func(o *listWatchOptions) { o.beforeRelist = f }
}

// listWatchBackoff spaces relists: 50ms doubling up to 5s, restarted
// after 10s of a working watch.
var listWatchBackoff = backoff.Policy{Min: 50 * time.Millisecond, Max: 5 * time.Second, Healthy: 10 * time.Second}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

type page struct {
	p   *rangePage
	err error
}

// fetch gets one page in its own goroutine, so that the next page is on
// its way while the handler processes the current one.
func (lw *listWatch) fetch(ctx context.Context, key string, rev int64) <-chan page {
	ch := make(chan page, 1)
	go func() {
		p, err := lw.c.getPage(ctx, key, clientv3.GetPrefixRangeEnd(lw.prefix), lw.c.cfg.ListPageSize, rev)
		ch <- page{p, err}
	}()
	return ch
}

func (lw *listWatch) list(ctx context.Context) error {
	c := lw.c
	var rev, total int64
	var clusterID uint64
	gen := lw.gen + 1
	next := lw.fetch(ctx, lw.prefix, 0)
	defer func() {
		if next != nil { // an error left a fetch in flight: wait for it
			<-next
		}
	}()
	for {
		pg := <-next
		next = nil
		if pg.err != nil {
			return fmt.Errorf("list: %w", pg.err)
		}
		p := pg.p
		if rev == 0 {
			rev, clusterID, total = p.Revision, p.ClusterID, p.Count
			if lw.own != nil && len(lw.own) == 0 && p.Count > 0 {
				// The first page counts the whole range: size the index
				// once instead of growing it through every page.
				lw.own = make(mapIndex, p.Count)
				lw.known = lw.own
			}
			if prev := c.pinClusterID(clusterID); prev != 0 && prev != clusterID {
				c.log.Warn("etcd cluster ID changed", "prefix", lw.prefix, "was", prev, "now", clusterID)
			}
		} else if p.ClusterID != clusterID {
			return fmt.Errorf("list: %w during paging", ErrClusterIDChanged)
		}
		more := p.More && len(p.Kvs) > 0
		if more {
			next = lw.fetch(ctx, string(p.Kvs[len(p.Kvs)-1].Key)+"\x00", rev)
		}
		for _, kv := range p.Kvs {
			k := string(kv.Key)
			st := KeyState{Sum: maphash.Bytes(lw.seed, kv.Value), Gen: gen}
			if lw.own != nil {
				old, ok := lw.own[k]
				lw.own[k] = st
				if ok && old.Sum == st.Sum {
					continue // unchanged (a handler with an Index decides this itself)
				}
			}
			lw.upsert(Event{Kind: EventUpsert, Key: k, Value: kv.Value, Revision: kv.ModRevision, Total: total, State: st})
		}
		if !more {
			break
		}
	}
	// The list is complete: whatever was known and not seen is gone.
	var gone []string
	lw.known.Range(func(k string, st KeyState) bool {
		if st.Gen != gen {
			gone = append(gone, k)
		}
		return true
	})
	for _, k := range gone {
		lw.handle(Event{Kind: EventDelete, Key: k, Revision: rev})
		delete(lw.own, k)
	}
	lw.gen, lw.clusterID = gen, clusterID
	lw.lastRev.Store(rev)
	lw.handle(Event{Kind: EventListDone, Revision: rev})
	return nil
}

// watch follows the prefix from lastRev + 1 and returns why it stopped: an
// error wrapping errWatchInterrupted when the stream broke (ListWatch then
// resumes from the last revision seen, without a relist), else why a relist
// is needed.
//
// The stream is etcd's Watch RPC, read on this goroutine: a change goes
// from the gRPC transport's reader straight to the handler, one goroutine
// hand-off. clientv3's Watcher would add three (its stream reader, its
// dispatcher and the per-watch buffer behind the returned channel), each a
// goroutine switch on the event's way. The watch needs none of what they
// provide: one watch per stream, no fragments, no progress notifications,
// and resuming is ListWatch's own loop.
func (lw *listWatch) watch(ctx context.Context, retry *backoff.Backoff) error {
	c := lw.c
	wctx, cancel := context.WithCancelCause(clientv3.WithRequireLeader(ctx))
	defer cancel(nil)
	stream, err := c.etcd.ActiveConnection().NewStream(wctx, &pb.Watch_ServiceDesc.Streams[0], pb.Watch_Watch_FullMethodName, inPlaceCall...)
	if err != nil {
		return lw.streamErr(ctx, wctx, err)
	}
	create := &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
		Key: []byte(lw.prefix), RangeEnd: []byte(clientv3.GetPrefixRangeEnd(lw.prefix)), StartRevision: lw.lastRev.Load() + 1,
	}}}
	var wr watchResponse // decoded in place, its events reused
	if err := stream.SendMsg(create); err != nil {
		if errors.Is(err, io.EOF) {
			// gRPC: the stream broke; its status comes from Recv.
			err = stream.RecvMsg(&wr)
		}
		return lw.streamErr(ctx, wctx, err)
	}
	// A replaced or restored etcd may keep the stream open without sending
	// anything: checked beside the stream, which it ends with the reason.
	// (Its requests do not require a leader, as before.)
	cctx, stopCheck := context.WithCancel(ctx)
	var checker sync.WaitGroup
	defer checker.Wait()
	defer stopCheck()
	checker.Go(func() {
		check := time.NewTicker(c.cfg.KeepaliveInterval.D())
		defer check.Stop()
		for {
			select {
			case <-cctx.Done():
				return
			case <-check.C:
				if err := lw.checkCluster(cctx); err != nil {
					cancel(err)
					return
				}
			}
		}
	})
	for {
		if err := stream.RecvMsg(&wr); err != nil {
			return lw.streamErr(ctx, wctx, err)
		}
		if id := wr.ClusterID; id != 0 && id != lw.clusterID {
			return fmt.Errorf("watch: %w: %x -> %x", ErrClusterIDChanged, lw.clusterID, id)
		}
		if wr.CompactRevision != 0 {
			return fmt.Errorf("watch: %w (compacted to %d)", rpctypes.ErrCompacted, wr.CompactRevision)
		}
		if wr.Canceled {
			return fmt.Errorf("watch: %w: canceled by etcd: %s", ErrWatchClosed, wr.CancelReason)
		}
		if wr.Created {
			retry.Success()
		}
		for i := range wr.Events {
			lw.apply(&wr.Events[i])
		}
	}
}

// maxResponse bounds one response of etcd: a list page (ListPageSize
// keys), or a watch response (etcd sends up to 1,000 revisions at once
// while a resumed watch catches up).
const maxResponse = 256 << 20

// errWatchInterrupted: the watch stream broke (connection lost, no leader);
// ListWatch resumes watching from the last revision seen.
var errWatchInterrupted = errors.New("watch interrupted")

// streamErr is why the watch stream of wctx (under ctx) ended with err: the
// checker's reason, ctx's end, an interruption to resume from, or an error
// etcd answered that calls for a relist.
func (lw *listWatch) streamErr(ctx, wctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if cause := context.Cause(wctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	// io.EOF: the stream ended without an error status (etcd asked for
	// nothing to be relisted; a compaction shows when the watch resumes).
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("watch: %w: stream closed: %w", errWatchInterrupted, err)
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.Internal:
		return fmt.Errorf("watch: %w: %w", errWatchInterrupted, err)
	}
	return fmt.Errorf("watch: %w", err)
}

func (lw *listWatch) apply(ev *watchEvent) {
	k := string(ev.Key)
	rev := ev.ModRevision
	if rev > lw.lastRev.Load() {
		lw.lastRev.Store(rev)
	}
	switch ev.Type {
	case mvccpb.PUT:
		st := KeyState{Sum: maphash.Bytes(lw.seed, ev.Value), Gen: lw.gen}
		if lw.own != nil {
			lw.own[k] = st
		}
		lw.upsert(Event{Kind: EventUpsert, Key: k, Value: ev.Value, Revision: rev, State: st})
	case mvccpb.DELETE:
		if _, ok := lw.known.State(k); ok {
			lw.handle(Event{Kind: EventDelete, Key: k, Revision: rev})
			delete(lw.own, k)
		}
	}
}

// upsert hands ev to the handler and forgets its key (in ListWatch's own
// index) if the handler rejected it.
func (lw *listWatch) upsert(ev Event) {
	lw.handle(ev)
	if lw.own != nil && lw.rejected != nil && lw.rejected(ev.Key) {
		delete(lw.own, ev.Key)
	}
}

// checkCluster asks etcd for one (absent or present) key to compare its
// cluster ID and revision with what the watch saw: a replaced or restored
// etcd may keep the watch stream open without sending anything.
func (lw *listWatch) checkCluster(ctx context.Context) error {
	c := lw.c
	cctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout.D())
	defer cancel()
	// Read before the request: the watch goes on meanwhile, and what it
	// sees later may be newer than the answer.
	seen := lw.lastRev.Load()
	resp, err := c.etcd.Get(cctx, lw.prefix, clientv3.WithCountOnly())
	if err != nil {
		// Unreachable: the watch resumes by itself once etcd is back.
		c.recordErr(fmt.Errorf("check %s: %w", lw.prefix, err))
		return nil
	}
	if resp.Header.ClusterId != lw.clusterID {
		return fmt.Errorf("%w: %x -> %x", ErrClusterIDChanged, lw.clusterID, resp.Header.ClusterId)
	}
	if resp.Header.Revision < seen {
		return fmt.Errorf("%w: %d < %d", ErrRevisionRewound, resp.Header.Revision, seen)
	}
	return nil
}
