// Package services publishes the cluster's global services: every Service
// annotated service.cilium.io/global: "true" (or io.cilium/global-service)
// and not marked service.cilium.io/shared: "false" (or
// io.cilium/shared-service) becomes a ClusterService at
// cilium/state/services/v1/<cluster>/<namespace>/<name>, with the ClusterIPs
// as frontends and, as backends, the EndpointSlice endpoints that are ready or
// serving while terminating, with their ports by name. The entry goes when the
// Service goes or stops being global and shared.
package services
