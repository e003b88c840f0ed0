// Package meshstatus is how the agents and the clustermesh-apiserver report
// their view of the mesh through the Kubernetes API, so that the clustermesh
// CLI can show it without exec or port-forward into pods. Each reporter owns
// one ConfigMap in the release namespace (clustermesh-status-agent-<node> or
// clustermesh-status-apiserver), labelled app.kubernetes.io/part-of=clustermesh
// and holding its report as JSON under the key status.json. The JSON schema
// (AgentReport, APIServerReport) is a stable interface between the reporters
// and the CLI: add fields, never rename or remove them.
package meshstatus
