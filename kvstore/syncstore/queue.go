package syncstore

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// queue is a work queue of keys with the semantics of client-go's
// workqueue (a key is queued at most once, is never processed by two
// workers at once, and a key added while processed is queued again when
// done) plus delayed adds for retries. client-go itself is off limits for
// the kvstore packages.
type queue struct {
	mu         sync.Mutex
	items      []string
	dirty      map[string]struct{}
	processing map[string]struct{}
	delayed    delayHeap
	notify     chan struct{} // one-slot wake-up for waiting workers
	onDepth    func(int)     // reports the keys waiting (queued or delayed) after every change
}

func newQueue(onDepth func(int)) *queue {
	return &queue{
		dirty:      make(map[string]struct{}),
		processing: make(map[string]struct{}),
		notify:     make(chan struct{}, 1),
		onDepth:    onDepth,
	}
}

func (q *queue) wake() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

// add queues key unless it is queued already.
func (q *queue) add(key string) {
	q.mu.Lock()
	q.addLocked(key)
	q.mu.Unlock()
}

func (q *queue) addLocked(key string) {
	if _, ok := q.dirty[key]; ok {
		return
	}
	q.dirty[key] = struct{}{}
	if _, ok := q.processing[key]; !ok {
		q.items = append(q.items, key)
		q.wake()
	}
	q.onDepth(len(q.dirty) + len(q.delayed))
}

// addAfter queues key after d.
func (q *queue) addAfter(key string, d time.Duration) {
	q.mu.Lock()
	heap.Push(&q.delayed, delayed{key: key, at: time.Now().Add(d)})
	q.onDepth(len(q.dirty) + len(q.delayed))
	q.mu.Unlock()
	q.wake()
}

// getBatch returns up to max keys to process, waiting for at least one;
// ok is false when ctx is done.
func (q *queue) getBatch(ctx context.Context, max int) (keys []string, ok bool) {
	for {
		q.mu.Lock()
		now := time.Now()
		for len(q.delayed) > 0 && !q.delayed[0].at.After(now) {
			q.addLocked(heap.Pop(&q.delayed).(delayed).key)
		}
		if len(q.items) > 0 {
			n := min(len(q.items), max)
			keys = make([]string, n)
			copy(keys, q.items[:n])
			clear(q.items[:n])
			q.items = q.items[n:]
			for _, k := range keys {
				delete(q.dirty, k)
				q.processing[k] = struct{}{}
			}
			more := len(q.items) > 0
			q.onDepth(len(q.dirty) + len(q.delayed))
			q.mu.Unlock()
			if more {
				q.wake()
			}
			return keys, true
		}
		var t *time.Timer
		var timer <-chan time.Time
		if len(q.delayed) > 0 {
			t = time.NewTimer(q.delayed[0].at.Sub(now))
			timer = t.C
		}
		q.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-q.notify:
		case <-timer:
		}
		if t != nil {
			t.Stop()
		}
		if ctx.Err() != nil {
			return nil, false
		}
	}
}

// done marks key processed, queueing it again if it was added meanwhile.
func (q *queue) done(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.processing, key)
	if _, ok := q.dirty[key]; ok {
		q.items = append(q.items, key)
		q.wake()
	}
}

type delayed struct {
	key string
	at  time.Time
}

type delayHeap []delayed

func (h delayHeap) Len() int           { return len(h) }
func (h delayHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h delayHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *delayHeap) Push(x any)        { *h = append(*h, x.(delayed)) }
func (h *delayHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
