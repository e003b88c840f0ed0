// Package statusreport publishes the clustermesh-apiserver's status report
// (internal/meshstatus.APIServerReport) as a ConfigMap that `clustermesh
// status` reads: whenever the report changes and at least every interval,
// so that a deleted ConfigMap comes back.
package statusreport
