// Package health serves the clustermesh-apiserver's probe and metrics
// endpoints: /healthz (the process and its kvstore connection work), /readyz
// (every kind has been published once: initial sync done) and Prometheus
// /metrics, each on the address it is configured for.
package health
