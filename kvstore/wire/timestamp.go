package wire

import (
	"fmt"
	"time"
)

// FormatTimestamp returns the value of the heartbeat and of sync canaries:
// t in RFC 3339, UTC.
func FormatTimestamp(t time.Time) []byte {
	return []byte(t.UTC().Format(time.RFC3339))
}

// ParseTimestamp reads a heartbeat or sync-canary value (RFC 3339, with or
// without fractional seconds). Errors wrap ErrMalformed or ErrTooLarge.
func ParseTimestamp(value []byte) (time.Time, error) {
	if len(value) > 64 {
		return time.Time{}, fmt.Errorf("timestamp: %w: %d bytes", ErrTooLarge, len(value))
	}
	t, err := time.Parse(time.RFC3339Nano, string(value))
	if err != nil {
		return time.Time{}, fmt.Errorf("timestamp: %w: %v", ErrMalformed, err)
	}
	return t, nil
}
