package server

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/syncstore"
)

// SyncStoreFactory makes kvstore/syncstore stores on kv, their metrics
// registered on reg (nil: not registered).
func SyncStoreFactory(kv *kvstore.Client, log *slog.Logger, reg prometheus.Registerer) StoreFactory {
	return func(name, prefix, syncedKey string) Store {
		return syncstore.New(kv, syncstore.Config{Prefix: prefix, SyncedKey: syncedKey, Name: name}, log, reg)
	}
}
