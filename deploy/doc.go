// Package deploy holds the Helm chart of Clustermesh (charts/clustermesh) and
// embeds it, so that the clustermesh CLI installs exactly the chart kept in
// this directory rather than a second copy of its manifests. Its tests lint
// and render the chart for each option and apply the result with server-side
// dry-run to a real kube-apiserver.
package deploy
