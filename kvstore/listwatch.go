package kvstore

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
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
	// Value is the new value of an upsert; the handler may keep it.
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
	lastRev   int64  // highest revision seen
}

// ListWatch lists prefix in pages of ListPageSize keys, then watches it from
// the list revision + 1, calling handle for every change, in order, from the
// calling goroutine. After every (re)list it emits EventDelete for the keys
// that were reported before but are no longer there, and then EventListDone.
// It relists when the watch revision was compacted, the watch failed, the
// etcd cluster ID changed or the revision went backwards (a restored etcd);
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
	for {
		var err error
		if reason != nil && o.beforeRelist != nil {
			if err = o.beforeRelist(ctx, reason); err != nil {
				err = fmt.Errorf("before relist: %w", err)
			}
		}
		if err == nil {
			if err = lw.list(ctx); err == nil {
				retry.Success()
				err = lw.watch(ctx)
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if lw.gen > 0 {
			reason = err
		}
		c.recordErr(fmt.Errorf("list-watch %s: %w", prefix, err))
		wait := retry.Failure()
		c.log.Info("relisting", "prefix", prefix, "reason", err, "failures", retry.Failures(), "retry_in", wait)
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
	resp *clientv3.GetResponse
	err  error
}

// fetch gets one page in its own goroutine, so that the next page is on
// its way while the handler processes the current one.
func (lw *listWatch) fetch(ctx context.Context, key string, rev int64) <-chan page {
	ch := make(chan page, 1)
	opts := []clientv3.OpOption{
		clientv3.WithRange(clientv3.GetPrefixRangeEnd(lw.prefix)),
		clientv3.WithLimit(lw.c.cfg.ListPageSize),
	}
	if rev != 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	go func() {
		resp, err := lw.c.etcd.Get(ctx, key, opts...)
		ch <- page{resp, err}
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
		resp := pg.resp
		if rev == 0 {
			rev, clusterID, total = resp.Header.Revision, resp.Header.ClusterId, resp.Count
			if lw.own != nil && len(lw.own) == 0 && resp.Count > 0 {
				// The first page counts the whole range: size the index
				// once instead of growing it through every page.
				lw.own = make(mapIndex, resp.Count)
				lw.known = lw.own
			}
			if prev := c.pinClusterID(clusterID); prev != 0 && prev != clusterID {
				c.log.Warn("etcd cluster ID changed", "prefix", lw.prefix, "was", prev, "now", clusterID)
			}
		} else if resp.Header.ClusterId != clusterID {
			return fmt.Errorf("list: %w during paging", ErrClusterIDChanged)
		}
		more := resp.More && len(resp.Kvs) > 0
		if more {
			next = lw.fetch(ctx, string(resp.Kvs[len(resp.Kvs)-1].Key)+"\x00", rev)
		}
		for _, kv := range resp.Kvs {
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
	lw.gen, lw.clusterID, lw.lastRev = gen, clusterID, rev
	lw.handle(Event{Kind: EventListDone, Revision: rev})
	return nil
}

// watch follows the prefix from the list revision + 1 and returns why a
// relist is needed.
func (lw *listWatch) watch(ctx context.Context) error {
	c := lw.c
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := c.etcd.Watch(wctx, lw.prefix, clientv3.WithPrefix(), clientv3.WithRev(lw.lastRev+1))
	check := time.NewTicker(c.cfg.KeepaliveInterval.D())
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-check.C:
			if err := lw.checkCluster(ctx); err != nil {
				return err
			}
		case wr, ok := <-wch:
			if !ok {
				return ErrWatchClosed
			}
			if wr.CompactRevision != 0 {
				return fmt.Errorf("watch: %w (compacted to %d)", rpctypes.ErrCompacted, wr.CompactRevision)
			}
			if err := wr.Err(); err != nil {
				return fmt.Errorf("watch: %w", err)
			}
			if id := wr.Header.ClusterId; id != 0 && id != lw.clusterID {
				return fmt.Errorf("watch: %w: %x -> %x", ErrClusterIDChanged, lw.clusterID, id)
			}
			for _, ev := range wr.Events {
				lw.apply(ev)
			}
		}
	}
}

func (lw *listWatch) apply(ev *clientv3.Event) {
	k := string(ev.Kv.Key)
	rev := ev.Kv.ModRevision
	lw.lastRev = max(lw.lastRev, rev)
	switch ev.Type {
	case clientv3.EventTypePut:
		st := KeyState{Sum: maphash.Bytes(lw.seed, ev.Kv.Value), Gen: lw.gen}
		if lw.own != nil {
			lw.own[k] = st
		}
		lw.upsert(Event{Kind: EventUpsert, Key: k, Value: ev.Kv.Value, Revision: rev, State: st})
	case clientv3.EventTypeDelete:
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
	resp, err := c.etcd.Get(cctx, lw.prefix, clientv3.WithCountOnly())
	if err != nil {
		// Unreachable: the watch resumes by itself once etcd is back.
		c.recordErr(fmt.Errorf("check %s: %w", lw.prefix, err))
		return nil
	}
	if resp.Header.ClusterId != lw.clusterID {
		return fmt.Errorf("%w: %x -> %x", ErrClusterIDChanged, lw.clusterID, resp.Header.ClusterId)
	}
	if resp.Header.Revision < lw.lastRev {
		return fmt.Errorf("%w: %d < %d", ErrRevisionRewound, resp.Header.Revision, lw.lastRev)
	}
	return nil
}
