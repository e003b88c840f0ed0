// Package cli defines the cobra commands of the clustermesh CLI (enable,
// connect, disconnect, status): flags, help with examples and output. The
// work is done by package mesh; main only builds the root command and runs it.
package cli
