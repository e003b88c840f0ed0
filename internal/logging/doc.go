// Package logging builds the daemons' slog loggers from the --log-format
// flag (text or json), so that clustermesh-agent and clustermesh-apiserver
// accept the same values.
package logging
