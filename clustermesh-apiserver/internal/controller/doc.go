// Package controller is the informer-to-etcd plumbing shared by the
// clustermesh-apiserver's publishers: informer handlers only enqueue object
// keys, a fixed set of workers reconcile each key against its lister (retrying
// with a per-key rate limit), and the controller reports once every key of the
// informer's initial listing has been reconciled, which is when a publisher may
// mark its kvstore prefix synced.
package controller
