package statusapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/clustermesh/clustermesh/agent/internal/dpsync"
	"github.com/clustermesh/clustermesh/agent/internal/remotecluster"
	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	agentv1 "github.com/clustermesh/clustermesh/api/agent/v1"
	"github.com/clustermesh/clustermesh/internal/datapath"
)

// Remotes is what the server needs of the remote-cluster manager.
type Remotes interface {
	Status() []remotecluster.Status
	ClusterNames() map[uint32]string
}

// Services is what the server needs of the merger.
type Services interface {
	Snapshot() []servicemerge.Snapshot
	ProxyOnly() []servicemerge.Kept
}

// Datapath is what the server needs of the reconciler.
type Datapath interface {
	Tunnels() []datapath.TunnelEntry
	IPCache() []datapath.IPCacheEntry
	Holding() []uint32
	Stats() dpsync.Stats
}

// Config configures a Server.
type Config struct {
	Socket      string
	ClusterName string
	ClusterID   uint32
	NodeName    string
	// BesideKubeProxy: coexistence mode, where the datapath passes a packet
	// to a frontend without a backend on untranslated, for kube-proxy to
	// reject; a trace to such a frontend is a trace to its address.
	BesideKubeProxy bool
}

// Server serves the status API.
type Server struct {
	agentv1.UnimplementedStatusServer
	cfg      Config
	remotes  Remotes
	services Services
	dp       Datapath
	log      *slog.Logger
	policy   Policy // nil: no policy plane
	// world returns the state of the world decision (nil: not shown).
	world func() WorldIngress
}

// New returns a Server.
func New(cfg Config, remotes Remotes, services Services, dp Datapath, log *slog.Logger) *Server {
	return &Server{cfg: cfg, remotes: remotes, services: services, dp: dp, log: log}
}

// Run serves on the unix socket until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(s.cfg.Socket), 0o755); err != nil {
		return fmt.Errorf("status socket: %w", err)
	}
	if err := os.Remove(s.cfg.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("status socket: %w", err)
	}
	ln, err := net.Listen("unix", s.cfg.Socket)
	if err != nil {
		return fmt.Errorf("status socket: %w", err)
	}
	gs := grpc.NewServer()
	agentv1.RegisterStatusServer(gs, s)
	done := make(chan error, 1)
	go func() { done <- gs.Serve(ln) }()
	select {
	case <-ctx.Done():
		gs.Stop()
		<-done
		return nil
	case err := <-done:
		return fmt.Errorf("status server: %w", err)
	}
}

// GetStatus implements agentv1.StatusServer.
func (s *Server) GetStatus(_ context.Context, req *agentv1.GetStatusRequest) (*agentv1.GetStatusResponse, error) {
	return s.Build(req.GetIncludeEntries()), nil
}

func ts(t time.Time) bool { return !t.IsZero() }

// Build assembles the status response.
func (s *Server) Build(includeEntries bool) *agentv1.GetStatusResponse {
	names := s.remotes.ClusterNames()
	st := s.dp.Stats()
	resp := &agentv1.GetStatusResponse{
		ClusterName: s.cfg.ClusterName, ClusterId: s.cfg.ClusterID, NodeName: s.cfg.NodeName,
		RestoringClusterIds: s.dp.Holding(),
		DatapathBatches:     st.Batches, DatapathFailures: st.Failures, DatapathLastError: st.LastError, DatapathTrims: st.Trims,
	}
	for _, r := range s.remotes.Status() {
		rc := &agentv1.RemoteCluster{
			Name: r.Name, Id: r.ID, Connected: r.Connected, Ready: r.Ready,
			Failures: r.Failures, Reconnects: r.Reconnects, LastError: r.LastError, RefusedReason: r.RefusedReason,
			WaitingForCanary: r.WaitingForCanary, PodCidrOverlap: r.PodCIDROverlap,
		}
		if ts(r.LastChange) {
			rc.LastChange = timestamppb.New(r.LastChange)
		}
		if ts(r.LastHeartbeat) {
			rc.LastHeartbeat = timestamppb.New(r.LastHeartbeat)
		}
		if ts(r.ProgrammedAt) {
			rc.ProgrammedAt, rc.SyncDuration = timestamppb.New(r.ProgrammedAt), durationpb.New(r.SyncTook)
		}
		for _, k := range r.Kinds {
			rc.Kinds = append(rc.Kinds, &agentv1.KindStatus{Kind: k.Kind, Synced: k.Synced, Entries: k.Entries, Invalid: k.Invalid, Events: k.Events})
		}
		for _, c := range r.Refused {
			rc.RefusedClaims = append(rc.RefusedClaims, &agentv1.RefusedClaims{Reason: c.Reason, Count: c.Count, Examples: c.Examples})
		}
		for _, c := range r.Conflicts {
			rc.Conflicts = append(rc.Conflicts, &agentv1.ClaimConflict{Kind: c.Kind, Prefix: c.Prefix, Claimants: c.Claimants})
		}
		resp.RemoteClusters = append(resp.RemoteClusters, rc)
	}
	for _, snap := range s.services.Snapshot() {
		for _, svc := range snap.Services {
			out := &agentv1.Service{Namespace: snap.Name.Namespace, Name: snap.Name.Name,
				Frontend: svc.Frontend.Addr.String(), Protocol: svc.Frontend.Proto.String()}
			for _, b := range svc.Backends {
				out.Backends = append(out.Backends, &agentv1.Backend{Address: b.Addr.String(), ClusterId: b.ClusterID,
					Cluster: names[b.ClusterID], Weight: uint32(b.Weight)})
			}
			resp.Services = append(resp.Services, out)
		}
	}
	for _, k := range s.services.ProxyOnly() {
		resp.ProxyOnlyServices = append(resp.ProxyOnlyServices, &agentv1.ProxyOnlyService{Namespace: k.Name.Namespace, Name: k.Name.Name, Reason: k.Reason})
	}
	if s.policy != nil {
		resp.Policy = s.policyStatus(names)
		resp.Policy.WorldIngress = s.worldStatus()
	}
	if includeEntries {
		tun := s.dp.Tunnels()
		sort.Slice(tun, func(i, j int) bool { return tun[i].CIDR.Addr().Less(tun[j].CIDR.Addr()) })
		for _, t := range tun {
			resp.Tunnels = append(resp.Tunnels, &agentv1.TunnelEntry{Cidr: t.CIDR.String(), NodeIp: t.NodeIP.String(), ClusterId: t.ClusterID})
		}
		ipc := s.dp.IPCache()
		sort.Slice(ipc, func(i, j int) bool { return ipc[i].Prefix.Addr().Less(ipc[j].Prefix.Addr()) })
		for _, e := range ipc {
			te := ""
			if e.TunnelEndpoint.IsValid() {
				te = e.TunnelEndpoint.String()
			}
			resp.Ipcache = append(resp.Ipcache, &agentv1.IPCacheEntry{Prefix: e.Prefix.String(), Identity: e.Identity, TunnelEndpoint: te, ClusterId: e.ClusterID})
		}
	}
	return resp
}
