{{/* Labels common to every object of the release. */}}
{{- define "clustermesh.labels" -}}
app.kubernetes.io/part-of: clustermesh
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "clustermesh.apiserver.selector" -}}
app.kubernetes.io/name: clustermesh-apiserver
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "clustermesh.agent.selector" -}}
app.kubernetes.io/name: clustermesh-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "clustermesh.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/*
"true" when the agents read their own cluster's etcd as the user
local-reader (the identities of their pods, for network policy; in
connection mode kvstoremesh also the cache): always, except with
tls.source values without the local-reader certificate.
*/}}
{{- define "clustermesh.agent.ownKVStore" -}}
{{- $v := .Values -}}
{{- if or (ne $v.tls.source "values") (and $v.tls.localReader.cert $v.tls.localReader.key) -}}true{{- end -}}
{{- end -}}

{{/* Fails the render when the cluster identity is not usable (DESIGN §3). */}}
{{- define "clustermesh.validate" -}}
{{- $v := .Values -}}
{{- if not (regexMatch "^([a-z0-9][-a-z0-9]*)?[a-z0-9]$" (toString $v.cluster.name)) -}}
{{- fail "cluster.name must be set: lower-case letters, digits and '-', starting and ending with a letter or digit" -}}
{{- end -}}
{{- if gt (len $v.cluster.name) 32 -}}
{{- fail "cluster.name must be at most 32 characters" -}}
{{- end -}}
{{- if eq $v.cluster.name "default" -}}
{{- fail "cluster.name \"default\" is reserved for clusters outside a mesh" -}}
{{- end -}}
{{- if not (has (int $v.maxConnectedClusters) (list 255 511)) -}}
{{- fail "maxConnectedClusters must be 255 or 511" -}}
{{- end -}}
{{- if or (lt (int $v.cluster.id) 1) (gt (int $v.cluster.id) (int $v.maxConnectedClusters)) -}}
{{- fail (printf "cluster.id must be between 1 and %d (0 is reserved)" (int $v.maxConnectedClusters)) -}}
{{- end -}}
{{- if not (has $v.apiserver.service.type (list "LoadBalancer" "NodePort" "ClusterIP")) -}}
{{- fail "apiserver.service.type must be LoadBalancer, NodePort or ClusterIP" -}}
{{- end -}}
{{- if not (has $v.etcd.mode (list "embedded" "external")) -}}
{{- fail "etcd.mode must be embedded or external" -}}
{{- end -}}
{{- if and (eq $v.etcd.mode "external") (or (not $v.etcd.external.endpoints) (not $v.etcd.external.tlsSecret)) -}}
{{- fail "etcd.mode external needs etcd.external.endpoints and etcd.external.tlsSecret" -}}
{{- end -}}
{{- if not (has $v.agent.connectionMode (list "direct" "kvstoremesh")) -}}
{{- fail "agent.connectionMode must be direct or kvstoremesh" -}}
{{- end -}}
{{- if and (eq $v.agent.connectionMode "kvstoremesh") (not $v.kvstoremesh.enabled) -}}
{{- fail "agent.connectionMode kvstoremesh needs kvstoremesh.enabled" -}}
{{- end -}}
{{- if and (eq $v.agent.connectionMode "kvstoremesh") (eq $v.tls.source "values") (not (and $v.tls.localReader.cert $v.tls.localReader.key)) -}}
{{- fail "agent.connectionMode kvstoremesh with tls.source values needs tls.localReader cert and key" -}}
{{- end -}}
{{- if not (has $v.tls.source (list "helm" "values" "existing")) -}}
{{- fail "tls.source must be helm, values or existing" -}}
{{- end -}}
{{- if and (eq $v.tls.source "values") (not (and $v.tls.ca.cert $v.tls.ca.key $v.tls.server.cert $v.tls.server.key $v.tls.admin.cert $v.tls.admin.key)) -}}
{{- fail "tls.source values needs tls.ca, tls.server and tls.admin cert and key" -}}
{{- end -}}
{{- if not (has $v.agent.datapath (list "bpf" "memory")) -}}
{{- fail "agent.datapath must be bpf or memory" -}}
{{- end -}}
{{- end -}}
