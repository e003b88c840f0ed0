package runner

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// ErrStopped: a part returned nil although its context was not done. A
// part that gives up silently would leave the process running without it.
var ErrStopped = errors.New("stopped before it was asked to")

// Part is a named long-running part of a process.
type Part struct {
	Name string
	Run  func(context.Context) error
}

// All runs every part until ctx is done or one part returns, whatever it
// returns; it then cancels the others and waits for all of them. It returns
// the first error (a part that returned nil early gives ErrStopped), or nil
// when ctx was done and every part returned nil.
func All(ctx context.Context, parts ...Part) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for _, p := range parts {
		wg.Go(func() {
			err := p.Run(ctx)
			if err == nil && ctx.Err() == nil {
				err = ErrStopped
			}
			if err != nil {
				once.Do(func() { first = fmt.Errorf("%s: %w", p.Name, err) })
				cancel()
			}
		})
	}
	wg.Wait()
	return first
}
