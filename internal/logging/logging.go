package logging

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
)

// ErrFormat is returned for an unknown log format.
var ErrFormat = errors.New("unknown log format")

// Format is a log format; it implements pflag.Value.
type Format string

// The formats.
const (
	Text Format = "text"
	JSON Format = "json"
)

// String returns the format's name.
func (f *Format) String() string { return string(*f) }

// Type names the flag's value type in help output.
func (f *Format) Type() string { return "text|json" }

// Set parses a flag value.
func (f *Format) Set(v string) error {
	switch Format(v) {
	case Text, JSON:
		*f = Format(v)
		return nil
	}
	return fmt.Errorf("%w %q (want text or json)", ErrFormat, v)
}

// New returns a logger writing to w in format f at level.
func New(w io.Writer, f Format, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if f == JSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
