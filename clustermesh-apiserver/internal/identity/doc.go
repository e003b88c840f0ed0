// Package identity allocates the cluster's numeric security identities.
//
// An identity is the id of a set of security labels (a pod's labels plus its
// namespace and cluster). Ids lie in the cluster's range (cluster_id << shift
// | local, local from 256) and are stored in etcd at
// cilium/state/identities/v1/id/<id> with the label string as value. The keys
// are not leased: on start the allocator lists them and rebuilds its label→id
// map, so a label set keeps its id across restarts of the apiserver. An id
// that no pod references any more is deleted from etcd after a grace period,
// measured on the clock passed in.
package identity
