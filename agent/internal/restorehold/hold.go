package restorehold

import (
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"sync"
)

// Datapath is what a Hold needs of the datapath reconciler
// (dpsync.Reconciler): the cluster IDs whose restored entries it holds, and
// the end of the hold of one.
type Datapath interface {
	Holding() []uint32
	Release(id uint32)
}

// Config configures a Hold.
type Config struct {
	// OwnID is the own cluster's ID.
	OwnID uint32
	// PolicyID is the cluster ID of the entries network policy owns (the
	// ipcache entries of CIDR identities, dpsync.CIDRClusterID): held until
	// PoliciesSynced, whatever the remotes do.
	PolicyID uint32
	// StateDir holds the state file ("" disables it: after a restart
	// every restored remote ID not configured is released at start).
	StateDir string
}

// Hold decides when restored datapath entries may be deleted.
type Hold struct {
	cfg Config
	dp  Datapath
	// ids returns the remotes' reserved cluster IDs by name now (the
	// remote set's).
	ids func() map[string]uint32
	log *slog.Logger

	mu       sync.Mutex
	previous map[string]uint32 // guarded by mu: the state file's remotes not reserved again yet
}

// New returns a Hold releasing through dp; ids returns the remotes'
// reserved cluster IDs by name.
func New(cfg Config, dp Datapath, ids func() map[string]uint32, log *slog.Logger) *Hold {
	return &Hold{cfg: cfg, dp: dp, ids: ids, log: log, previous: map[string]uint32{}}
}

// Load reads the state file written by the previous run. Call it before
// the remote set starts.
func (h *Hold) Load() {
	if h.cfg.StateDir == "" {
		return
	}
	data, err := os.ReadFile(h.file())
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			h.log.Warn("reading remote cluster state", "error", err)
		}
		return
	}
	var st map[string]uint32
	if err := json.Unmarshal(data, &st); err != nil {
		h.log.Warn("ignoring unreadable remote cluster state", "error", err)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	maps.Copy(h.previous, st)
}

// OwnSynced: the own cluster's sources have delivered their full state.
func (h *Hold) OwnSynced() { h.dp.Release(h.cfg.OwnID) }

// PoliciesSynced: the agent's policies are synced, so the CIDR entries
// they need are claimed again.
func (h *Hold) PoliciesSynced() { h.dp.Release(h.cfg.PolicyID) }

// Started: the first scan of the config directory is done; configured
// says whether a remote of that name is configured. The restored entries
// of every ID no configured remote will claim are released, and the
// state file's remotes that are not configured are forgotten.
func (h *Hold) Started(configured func(name string) bool) {
	keep := map[uint32]bool{h.cfg.OwnID: true, h.cfg.PolicyID: true}
	for _, id := range h.ids() {
		keep[id] = true
	}
	h.mu.Lock()
	for name, id := range h.previous {
		if configured(name) {
			keep[id] = true
		} else {
			delete(h.previous, name)
		}
	}
	h.saveLocked()
	h.mu.Unlock()
	for _, id := range h.dp.Holding() {
		if !keep[id] {
			h.log.Info("releasing restored datapath entries of an unconfigured cluster", "cluster_id", id)
			h.dp.Release(id)
		}
	}
}

// Reserved: remote name now holds cluster ID id (reserved in the remote
// set). The restored entries of the ID it held before, if another, are
// released.
func (h *Hold) Reserved(name string, id uint32) {
	if old, ok := h.forget(name); ok && old != id {
		h.dp.Release(old)
	}
}

// Synced: remote with cluster ID id has delivered its full state in its
// session.
func (h *Hold) Synced(id uint32) { h.dp.Release(id) }

// Removed: the config file of remote name, which held id (0: none), is
// gone and the remote is no longer in the set. The restored entries of
// its IDs are released.
func (h *Hold) Removed(name string, id uint32) {
	old, ok := h.forget(name)
	if id != 0 {
		h.dp.Release(id)
	}
	if ok && old != id {
		h.dp.Release(old)
	}
}

// forget drops the state file's ID of remote name, returning it, and
// writes the state file (the remote's ID may have changed meanwhile).
func (h *Hold) forget(name string) (uint32, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	old, ok := h.previous[name]
	delete(h.previous, name)
	h.saveLocked()
	return old, ok
}

func (h *Hold) file() string { return filepath.Join(h.cfg.StateDir, "remote-clusters.json") }

// saveLocked writes the state file: the remotes' IDs now and the previous
// run's remotes not reserved again yet.
func (h *Hold) saveLocked() {
	if h.cfg.StateDir == "" {
		return
	}
	st := h.ids()
	for name, id := range h.previous {
		if _, ok := st[name]; !ok {
			st[name] = id
		}
	}
	data, err := json.Marshal(st)
	if err == nil {
		err = os.MkdirAll(h.cfg.StateDir, 0o700)
	}
	tmp := h.file() + ".tmp"
	if err == nil {
		err = os.WriteFile(tmp, data, 0o600)
	}
	if err == nil {
		err = os.Rename(tmp, h.file())
	}
	if err != nil {
		h.log.Warn("persisting remote cluster state", "error", err)
	}
}
