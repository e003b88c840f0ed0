package remotecluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/remoteconn"
)

// Between `clustermesh connect` and the remote apiserver creating our user,
// the remote's etcd denies access: the agent keeps retrying at a short
// interval and connects once the user exists.
func TestDeniedUntilUserExists(t *testing.T) {
	dir := t.TempDir()
	c2 := startRemote(t, "c2", 2)
	c2.node(0)
	c2.canaries()
	// A certificate for our user, but no user yet.
	cfg, err := c2.srv.ClientConfig(etcdserver.RemoteUser(ownName))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Endpoints = []string{c2.proxy.endpoint()}

	c, err := kvstore.New(context.Background(), cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	_, getErr := c.Etcd().Get(context.Background(), "cilium/cluster-config/c2")
	c.Close()
	if !remoteconn.AccessDenied(getErr) || !remoteconn.AccessDenied(errors.Join(errors.New("read cluster config"), getErr)) {
		t.Fatalf("a missing user's read fails with %v; not recognised as access denied", getErr)
	}
	for _, err := range []error{nil, context.DeadlineExceeded, errors.New("dial tcp: connection refused"), ErrClusterIDConflict} {
		if remoteconn.AccessDenied(err) {
			t.Errorf("%v taken for access denied", err)
		}
	}

	a := startAgent(t, testConfig(dir, t.TempDir()), memory.New(), nil)
	writeFile(t, filepath.Join(dir, "c2"), must(json.Marshal(cfg)))
	await(t, a.dp, "denied, and said so", func(datapath.State) bool {
		s := a.status("c2")
		return !s.Ready && s.Failures >= 2 && strings.Contains(s.LastError, "permission denied")
	})
	if _, err := c2.srv.EnsureRemoteUser(context.Background(), ownName); err != nil {
		t.Fatal(err)
	}
	await(t, a.dp, "connected once the user exists", func(st datapath.State) bool {
		tun, _ := countCluster(st, 2)
		return tun == 1 && a.status("c2").Ready && a.status("c2").RefusedReason == ""
	})
}

func TestRetryWaitAfterDenial(t *testing.T) {
	cfg := Config{BackoffMin: 500 * time.Millisecond, BackoffMax: time.Minute}
	cfg.withDefaults()
	p := backoff.Policy{Min: cfg.BackoffMin, Max: cfg.BackoffMax}
	denied := fmt.Errorf("read cluster config: %w", rpctypes.ErrPermissionDenied)
	for attempt := range 12 {
		if w := remoteconn.RetryWait(denied, p.Delay(attempt), cfg.DeniedBackoffMax); w > 5*time.Second {
			t.Errorf("attempt %d denied: wait %v, want at most 5s", attempt, w)
		}
	}
	if w := remoteconn.RetryWait(errors.New("dial tcp: connection refused"), p.Delay(11), cfg.DeniedBackoffMax); w < 30*time.Second {
		t.Errorf("attempt 11 unreachable: wait %v, want the full backoff (30s..1m)", w)
	}
}
