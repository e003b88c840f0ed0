package runner

import (
	"context"
	"errors"
	"testing"
)

func TestAll(t *testing.T) {
	boom := errors.New("boom")
	blocks := Part{Name: "blocks", Run: func(ctx context.Context) error { <-ctx.Done(); return nil }}
	for _, tc := range []struct {
		name   string
		cancel bool // cancel the parent context once the parts run
		parts  []Part
		want   error
	}{
		{"an error stops the others", false, []Part{blocks, {"fails", func(context.Context) error { return boom }}}, boom},
		{"an early nil stops the others", false, []Part{blocks, {"quits", func(context.Context) error { return nil }}}, ErrStopped},
		{"cancelled: nil", true, []Part{blocks, blocks}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.cancel {
				cancel()
			}
			err := All(ctx, tc.parts...)
			if tc.want == nil && err != nil || !errors.Is(err, tc.want) {
				t.Fatalf("All: %v, want %v", err, tc.want)
			}
		})
	}
}
