package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

// EtcdMembers are the members of an etcd cluster that a test runs (in its
// own process, on loopback) as the operator of a cluster's external
// kvstore: that cluster's clustermesh-apiserver uses it through
// --kvstore-config instead of its embedded etcd (Config.ExternalEtcd).
//
// The members' ClusterName must be the mesh cluster's name (the remote
// users' permissions name it) and their server certificates must cover
// Gateway(), where the agents of the other clusters reach them. With
// JoinCLI their CA becomes the cluster's CA (enableExternal).
type EtcdMembers []*etcdserver.Server

// secretExternalClient is the Secret enableExternal gives the chart as
// etcd.external.tlsSecret: the external etcd's root client credentials.
const secretExternalClient = "clustermesh-external-etcd-client"

// Gateway is the address on the datacenter bridge where the harness
// forwards the loopback listeners; the node namespaces reach them there.
func Gateway() netip.Addr { return gateway }

// startExternal starts the clustermesh-apiserver of c with --kvstore-config
// naming every member of ms as the root user, and forwards each member's
// client port to the gateway. With JoinCLI it also gets the users file
// `clustermesh connect` maintains (mountRemoteUsers), so it creates the
// users remote-<cluster> in that etcd itself; with JoinDirect it runs
// without one and connectExternal creates them, as an operator could.
func (m *Mesh) startExternal(ctx context.Context, c *Cluster, ms EtcdMembers) error {
	if err := checkMembers(c, ms); err != nil {
		return err
	}
	admin := ms[0].AdminConfig()
	admin.Endpoints = nil
	for _, s := range ms {
		u, err := url.Parse(s.Config().ClientURL)
		if err != nil {
			return err
		}
		if _, err := m.forward(u.Host); err != nil {
			return err
		}
		admin.Endpoints = append(admin.Endpoints, s.Config().ClientURL)
	}
	data, err := yaml.Marshal(admin)
	if err != nil {
		return err
	}
	file := filepath.Join(c.dir, "kvstore-config.yaml")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		return err
	}
	ports, err := freePorts(1)
	if err != nil {
		return err
	}
	c.apiArgs = []string{
		"--kvstore-config=" + file,
		"--cluster-name=" + c.Name, "--cluster-id=" + strconv.Itoa(int(c.ID)),
		"--kubeconfig=" + c.CP.Kubeconfig(),
		"--health-address=127.0.0.1:" + strconv.Itoa(ports[0]), "--metrics-address=",
	}
	if m.cfg.Join == JoinCLI {
		if err := c.mountRemoteUsers(ctx); err != nil {
			return err
		}
		c.apiArgs = append(c.apiArgs, "--remote-users-file="+c.usersFile(), "--status-namespace="+meshNamespace)
	}
	c.apiHealth = "http://127.0.0.1:" + strconv.Itoa(ports[0]) + "/readyz"
	return c.StartAPIServer(ctx)
}

func checkMembers(c *Cluster, ms EtcdMembers) error {
	if len(ms) == 0 {
		return fmt.Errorf("cluster %s: external etcd without members", c.Name)
	}
	for _, s := range ms {
		if name := s.Config().ClusterName; name != c.Name {
			return fmt.Errorf("cluster %s: external etcd member %s serves cluster %q", c.Name, s.Config().Name, name)
		}
	}
	return nil
}

// gatewayEndpoints returns the client URL of every member as the node
// namespaces dial it: the gateway address with the member's port (the
// forwarders of startExternal), which the members' certificates cover.
func (ms EtcdMembers) gatewayEndpoints() ([]string, error) {
	var endpoints []string
	for _, s := range ms {
		u, err := url.Parse(s.Config().ClientURL)
		if err != nil {
			return nil, err
		}
		endpoints = append(endpoints, "https://"+net.JoinHostPort(gateway.String(), u.Port()))
	}
	return endpoints, nil
}

// enableExternal does for c, whose kvstore is the external etcd ms, what
// its operator does: it hands the etcd's CA to clustermesh as the Secret
// clustermesh-ca (enable adopts an existing one, and `connect` signs the
// remote users' client certificates with it, so the etcd trusts them) and
// the etcd's root client credentials as the chart's etcd.external.tlsSecret,
// then runs `clustermesh enable` in external mode with the members'
// endpoints as the node namespaces reach them, which `connect` hands to
// the other clusters' agents.
func (m *Mesh) enableExternal(ctx context.Context, c *Cluster, ms EtcdMembers) error {
	if err := checkMembers(c, ms); err != nil {
		return err
	}
	endpoints, err := ms.gatewayEndpoints()
	if err != nil {
		return err
	}
	ca := ms[0].CA()
	caKey, err := ca.KeyPEM()
	if err != nil {
		return err
	}
	admin := ms[0].AdminConfig()
	root := map[string][]byte{"ca.crt": ca.CertPEM()}
	for k, f := range map[string]string{"tls.crt": admin.CertFile, "tls.key": admin.KeyFile} {
		if root[k], err = os.ReadFile(f); err != nil {
			return err
		}
	}
	if err := kubetest.EnsureNamespace(ctx, c.CP.Client, meshNamespace); err != nil {
		return err
	}
	secrets := c.CP.Client.CoreV1().Secrets(meshNamespace)
	for name, data := range map[string]map[string][]byte{
		secretCA:             {"ca.crt": ca.CertPEM(), "ca.key": caKey},
		secretExternalClient: root,
	} {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: meshNamespace}, Data: data}
		if _, err := secrets.Create(ctx, s, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("secret %s: %w", name, err)
		}
	}
	if _, err := m.CLI(ctx, "enable", "--context="+c.Name, "--cluster-name="+c.Name, fmt.Sprintf("--cluster-id=%d", c.ID),
		"--set=etcd.mode=external", "--set=etcd.external.endpoints={"+strings.Join(endpoints, ",")+"}",
		"--set=etcd.external.tlsSecret="+secretExternalClient); err != nil {
		return err
	}
	s, err := secrets.Get(ctx, secretCA, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if !bytes.Equal(s.Data["ca.crt"], ca.CertPEM()) {
		return fmt.Errorf("clustermesh enable replaced secret %s: the external etcd does not trust the new CA", secretCA)
	}
	return nil
}

// connectExternal lets the agents of r read cluster e, whose kvstore is the
// external etcd ms: it creates the read-only user remote-<r> in that etcd
// (on the first running member) and writes r's client config with every
// member's forwarded endpoint, the CA and the user's certificate, as
// `clustermesh-apiserver` writes it for its embedded etcd.
func (m *Mesh) connectExternal(ctx context.Context, r, e *Cluster, ms EtcdMembers) error {
	var rc kvstore.Config
	err := errors.New("no running member")
	for _, s := range ms {
		if s.Running() {
			if rc, err = s.EnsureRemoteUser(ctx, r.Name); err == nil {
				break
			}
		}
	}
	if err != nil {
		return fmt.Errorf("connect %s to %s: remote user in the external etcd: %w", r.Name, e.Name, err)
	}
	endpoints, err := ms.gatewayEndpoints()
	if err != nil {
		return err
	}
	// The operator hands over the files as a Secret; they live next to the
	// config, as `clustermesh connect` stores them.
	return kvstore.WriteConfigFiles(r.ConfigDir, e.Name, endpoints, rc)
}

// APIServerReady asks the cluster's clustermesh-apiserver's /readyz once.
func (c *Cluster) APIServerReady(ctx context.Context) error {
	if c.APIServer.Exited() {
		return fmt.Errorf("clustermesh-apiserver %s exited: %s", c.Name, c.APIServer.LogTail(2000))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.apiHealth, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("clustermesh-apiserver %s: %w", c.Name, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("clustermesh-apiserver %s: readyz %s", c.Name, resp.Status)
	}
	return nil
}

// memberIDs returns the etcd member ID of every running member (0 for a
// stopped one) and the leader they report.
func (ms EtcdMembers) memberIDs(ctx context.Context) (ids []uint64, leader uint64, err error) {
	ids = make([]uint64, len(ms))
	var errs []error
	for i, s := range ms {
		if !s.Running() {
			continue
		}
		st, err := memberStatus(ctx, s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ids[i] = st.MemberID
		if st.Leader != 0 {
			leader = st.Leader
		}
	}
	return ids, leader, errors.Join(errs...)
}

func memberStatus(ctx context.Context, s *etcdserver.Server) (kvstore.EndpointStatus, error) {
	c, err := kvstore.New(ctx, s.AdminConfig(), slog.New(slog.DiscardHandler))
	if err != nil {
		return kvstore.EndpointStatus{}, err
	}
	defer c.Close()
	st := c.Status(ctx)
	if len(st.Endpoints) != 1 || !st.Endpoints[0].Reachable {
		return kvstore.EndpointStatus{}, fmt.Errorf("etcd member %s: status: %v", s.Config().Name, st.Endpoints)
	}
	return st.Endpoints[0], nil
}

// Leader returns the index of the running member that leads the raft
// group, as the running members report it.
func (ms EtcdMembers) Leader(ctx context.Context) (int, error) {
	ids, leader, err := ms.memberIDs(ctx)
	for i, id := range ids {
		if id != 0 && id == leader {
			return i, nil
		}
	}
	return -1, fmt.Errorf("no running member leads (leader %x, members %x): %w", leader, ids, err)
}

// MoveLeader makes member to the raft leader (etcd's leadership transfer,
// asked of the current leader).
func (ms EtcdMembers) MoveLeader(ctx context.Context, to int) error {
	ids, _, err := ms.memberIDs(ctx)
	if err != nil {
		return err
	}
	l, err := ms.Leader(ctx)
	if err != nil || l == to {
		return err
	}
	c, err := kvstore.New(ctx, ms[l].AdminConfig(), slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Etcd().MoveLeader(ctx, ids[to]); err != nil {
		return fmt.Errorf("move leader from %s to %s: %w", ms[l].Config().Name, ms[to].Config().Name, err)
	}
	return nil
}
