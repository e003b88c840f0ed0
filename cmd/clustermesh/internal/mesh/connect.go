package mesh

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/internal/pki"
)

// Connection modes.
const (
	// ModeBidirectional connects the source cluster with each destination,
	// both ways; destinations are not connected among themselves.
	ModeBidirectional = "bidirectional"
	// ModeMesh connects every pair of the given clusters, both ways.
	ModeMesh = "mesh"
)

// Authentication modes of a connection (how the reader authenticates to
// the exposer's etcd), Cilium's clustermesh.apiserver.tls.authMode values.
const (
	// AuthCluster: the reader is the user remote-<reader> (certificate
	// CN=remote-<reader>), revocable alone. Default.
	AuthCluster = "cluster"
	// AuthLegacy: the reader is the shared user remote (certificate
	// CN=remote), as a Cilium 1.18 cluster in its default mode expects.
	AuthLegacy = "legacy"
)

// idAnnotationPrefix marks, on the remote-clusters Secret, the cluster ID
// of each configured remote, so that later connects can refuse duplicates.
const idAnnotationPrefix = "ids.clustermesh.io/"

// ConnectConfig tunes Connect.
type ConnectConfig struct {
	Mode string
	// AuthMode is AuthCluster (default) or AuthLegacy, for every
	// direction of the connection.
	AuthMode          string
	SkipEndpointCheck bool
	// DialTimeout bounds the TCP check of each endpoint (default 3s).
	DialTimeout time.Duration
}

// member is an opened cluster with its identity.
type member struct {
	c    *Cluster
	info Info
}

// Pair is two clusters connected both ways.
type Pair struct{ A, B string }

// Result says which pairs were handled and what was written; an empty
// Changed list means the run changed nothing.
type Result struct {
	Pairs   []Pair   `json:"pairs"`
	Changed []string `json:"changed"`
}

func pairs(mode string, source *Cluster, dests []*Cluster) ([][2]int, error) {
	if len(dests) == 0 {
		return nil, fmt.Errorf("%w: at least one --destination-context is needed", ErrUsage)
	}
	var out [][2]int
	switch mode {
	case ModeBidirectional, "":
		for i := range dests {
			out = append(out, [2]int{0, i + 1})
		}
	case ModeMesh:
		for i := 0; i <= len(dests); i++ {
			for j := i + 1; j <= len(dests); j++ {
				out = append(out, [2]int{i, j})
			}
		}
	default:
		return nil, fmt.Errorf("%w: connection mode %q (want %s or %s)", ErrUsage, mode, ModeBidirectional, ModeMesh)
	}
	seen := map[string]bool{}
	for _, c := range append([]*Cluster{source}, dests...) {
		key := c.Kubeconfig + "\x00" + c.Context
		if seen[key] {
			return nil, fmt.Errorf("%w: context %q given twice", ErrUsage, c.Context)
		}
		seen[key] = true
	}
	return out, nil
}

func readMembers(ctx context.Context, cs []*Cluster) ([]member, error) {
	ms := make([]member, len(cs))
	for i, c := range cs {
		info, err := c.ReadInfo(ctx)
		if err != nil {
			return nil, err
		}
		ms[i] = member{c: c, info: info}
	}
	return ms, nil
}

// checkPair refuses two clusters that cannot be connected (DESIGN §3).
func checkPair(a, b member) error {
	for _, m := range []member{a, b} {
		if m.info.ID == 0 {
			return fmt.Errorf("connect %s: %w: cluster %s has ID 0, which is reserved", m.c.Context, ErrInvalidClusterID, m.info.Name)
		}
	}
	if a.info.Name == b.info.Name {
		return fmt.Errorf("connect %s and %s: %w: both are named %q; every cluster of a mesh needs its own name", a.c.Context, b.c.Context, ErrClusterNameConflict, a.info.Name)
	}
	if a.info.ID == b.info.ID {
		return fmt.Errorf("connect %s (%s) and %s (%s): %w: both have ID %d; every cluster of a mesh needs its own ID", a.c.Context, a.info.Name, b.c.Context, b.info.Name, ErrClusterIDConflict, a.info.ID)
	}
	if a.info.MaxConnectedClusters != b.info.MaxConnectedClusters {
		return fmt.Errorf("connect %s and %s: %w: %s has %d, %s has %d", a.c.Context, b.c.Context, ErrMaxConnectedMismatch,
			a.info.Name, a.info.MaxConnectedClusters, b.info.Name, b.info.MaxConnectedClusters)
	}
	return nil
}

// checkKnownRemotes refuses to add remote r to m when m already has another
// remote with r's ID.
func checkKnownRemotes(ctx context.Context, m, r member) error {
	s, err := m.c.Client.CoreV1().Secrets(m.c.Namespace).Get(ctx, secretRemoteClusters, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("context %q: %w", m.c.Context, err)
	}
	for k, v := range s.Annotations {
		name, ok := strings.CutPrefix(k, idAnnotationPrefix)
		if !ok || name == r.info.Name {
			continue
		}
		if id, err := strconv.ParseUint(v, 10, 32); err == nil && uint32(id) == r.info.ID {
			return fmt.Errorf("connect %s to %s: %w: %s is already connected to %s with ID %d", m.info.Name, r.info.Name, ErrClusterIDConflict, m.info.Name, name, id)
		}
	}
	return nil
}

// Connect connects source with each destination (bidirectional) or every
// pair of the given clusters (mesh). All checks run before the first write;
// a second run with the same arguments writes nothing.
func Connect(ctx context.Context, source *Cluster, dests []*Cluster, cfg ConnectConfig, log *slog.Logger) (Result, error) {
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 3 * time.Second
	}
	switch cfg.AuthMode {
	case "":
		cfg.AuthMode = AuthCluster
	case AuthCluster, AuthLegacy:
	default:
		return Result{}, fmt.Errorf("%w: auth mode %q (want %s or %s)", ErrUsage, cfg.AuthMode, AuthCluster, AuthLegacy)
	}
	ps, err := pairs(cfg.Mode, source, dests)
	if err != nil {
		return Result{}, err
	}
	ms, err := readMembers(ctx, append([]*Cluster{source}, dests...))
	if err != nil {
		return Result{}, err
	}
	var res Result
	for _, p := range ps {
		a, b := ms[p[0]], ms[p[1]]
		if err := checkPair(a, b); err != nil {
			return Result{}, err
		}
		if err := checkKnownRemotes(ctx, a, b); err != nil {
			return Result{}, err
		}
		if err := checkKnownRemotes(ctx, b, a); err != nil {
			return Result{}, err
		}
		res.Pairs = append(res.Pairs, Pair{A: a.info.Name, B: b.info.Name})
	}
	// Endpoints of every cluster that some other cluster will dial.
	eps := make([][]string, len(ms))
	for _, p := range ps {
		for _, i := range p {
			if eps[i] != nil {
				continue
			}
			m := ms[i]
			if eps[i], err = m.c.endpoints(ctx, m.info); err != nil {
				return Result{}, err
			}
			if cfg.SkipEndpointCheck {
				continue
			}
			log.Info("checking endpoint", "cluster", m.info.Name, "endpoints", eps[i])
			if err := dialAny(ctx, eps[i], cfg.DialTimeout); err != nil {
				return Result{}, fmt.Errorf("context %q (%s): %w: %v (pass --skip-endpoint-check if only the agents can reach it)", m.c.Context, m.info.Name, ErrEndpointUnreachable, err)
			}
		}
	}
	for _, p := range ps {
		a, b := ms[p[0]], ms[p[1]]
		log.Info("connecting", "a", a.info.Name, "b", b.info.Name)
		for _, dir := range [][2]int{{p[0], p[1]}, {p[1], p[0]}} {
			changed, err := link(ctx, ms[dir[0]], ms[dir[1]], eps[dir[1]], cfg.AuthMode, log)
			if err != nil {
				return res, err
			}
			res.Changed = append(res.Changed, changed...)
		}
	}
	return res, nil
}

// link lets reader r read exposer e: e's server certificate covers its
// endpoints, e's etcd has the read-only user remote-<r> (auth mode
// cluster) or remote (legacy), and r's agents have e's config, CA and a
// client certificate for that user.
func link(ctx context.Context, r, e member, endpoints []string, authMode string, log *slog.Logger) ([]string, error) {
	user := "remote-" + r.info.Name
	if authMode == AuthLegacy {
		user = "remote"
	}
	var changed []string
	ca, err := e.c.readCA(ctx)
	if err != nil {
		return nil, err
	}
	ok, err := e.c.ensureServerCert(ctx, ca, e.info.Name, endpointHosts(endpoints))
	if err != nil {
		return nil, err
	}
	if ok {
		log.Info("server certificate reissued to cover the endpoints", "cluster", e.info.Name, "endpoints", endpoints)
		changed = append(changed, e.c.Context+": secret/"+secretServer)
	}
	ok, err = e.c.editUsers(ctx, func(u remoteUsers) remoteUsers {
		u.Clusters = slices.DeleteFunc(u.Clusters, func(c string) bool { return c == r.info.Name })
		u.LegacyClusters = slices.DeleteFunc(u.LegacyClusters, func(c string) bool { return c == r.info.Name })
		if authMode == AuthLegacy {
			u.LegacyClusters = append(u.LegacyClusters, r.info.Name)
		} else {
			u.Clusters = append(u.Clusters, r.info.Name)
		}
		return u
	})
	if err != nil {
		return nil, err
	}
	if ok {
		log.Info("added read-only etcd user", "cluster", e.info.Name, "user", user, "reader", r.info.Name)
		changed = append(changed, e.c.Context+": configmap/"+configMapUsers)
	}
	ok, err = r.c.editRemotes(ctx, func(s *corev1.Secret) error {
		return setRemote(s, e, ca, endpoints, user)
	})
	if err != nil {
		return nil, err
	}
	if ok {
		log.Info("wrote remote cluster config", "cluster", r.info.Name, "remote", e.info.Name)
		changed = append(changed, r.c.Context+": secret/"+secretRemoteClusters)
	}
	return changed, nil
}

// Key names of one remote cluster in the remote-clusters Secret.
func remoteKeys(name string) (config, ca, cert, key string) {
	return name, name + ".etcd-client-ca.crt", name + ".etcd-client.crt", name + ".etcd-client.key"
}

func remoteConfig(name string, endpoints []string) []byte {
	_, ca, cert, key := remoteKeys(name)
	var b bytes.Buffer
	b.WriteString("endpoints:\n")
	for _, e := range endpoints {
		fmt.Fprintf(&b, "  - %s\n", e)
	}
	fmt.Fprintf(&b, "trusted-ca-file: %s/%s\ncert-file: %s/%s\nkey-file: %s/%s\n",
		RemoteClustersDir, ca, RemoteClustersDir, cert, RemoteClustersDir, key)
	return b.Bytes()
}

// setRemote puts e's entry into the remote-clusters Secret s, keeping a
// client certificate that is still valid for user and e's CA.
func setRemote(s *corev1.Secret, e member, ca *pki.CA, endpoints []string, user string) error {
	cfgKey, caKey, certKey, keyKey := remoteKeys(e.info.Name)
	if s.Data == nil {
		s.Data = map[string][]byte{}
	}
	if !certUsable(s.Data[certKey], ca, user, nil) || len(s.Data[keyKey]) == 0 {
		kp, err := ca.IssueClient(user)
		if err != nil {
			return err
		}
		s.Data[certKey], s.Data[keyKey] = kp.CertPEM, kp.KeyPEM
	}
	s.Data[cfgKey] = remoteConfig(e.info.Name, endpoints)
	s.Data[caKey] = ca.CertPEM()
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations[idAnnotationPrefix+e.info.Name] = strconv.FormatUint(uint64(e.info.ID), 10)
	return nil
}

// editRemotes applies edit to the remote-clusters Secret (created if
// missing) and writes it only if it changed.
func (c *Cluster) editRemotes(ctx context.Context, edit func(*corev1.Secret) error) (bool, error) {
	secrets := c.Client.CoreV1().Secrets(c.Namespace)
	s, err := secrets.Get(ctx, secretRemoteClusters, metav1.GetOptions{})
	create := apierrors.IsNotFound(err)
	if create {
		s = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: secretRemoteClusters, Namespace: c.Namespace, Labels: labels()}, Type: corev1.SecretTypeOpaque}
	} else if err != nil {
		return false, fmt.Errorf("context %q: %w", c.Context, err)
	}
	before := s.DeepCopy()
	if err := edit(s); err != nil {
		return false, err
	}
	if create {
		if len(s.Data) == 0 {
			return false, nil
		}
		_, err = secrets.Create(ctx, s, metav1.CreateOptions{})
	} else {
		if maps.EqualFunc(before.Data, s.Data, bytes.Equal) && maps.Equal(before.Annotations, s.Annotations) {
			return false, nil
		}
		_, err = secrets.Update(ctx, s, metav1.UpdateOptions{})
	}
	if err != nil {
		return false, fmt.Errorf("context %q: write secret %s: %w", c.Context, secretRemoteClusters, err)
	}
	return true, nil
}

// remoteUsers is the users.yaml of the clustermesh-remote-users ConfigMap
// (the apiserver's remoteusers.File).
type remoteUsers struct {
	// Clusters have a read-only etcd user remote-<cluster>.
	Clusters []string `json:"clusters"`
	// LegacyClusters read as the shared user remote.
	LegacyClusters []string `json:"legacyClusters,omitempty"`
}

func (u *remoteUsers) normalize() {
	for _, l := range []*[]string{&u.Clusters, &u.LegacyClusters} {
		slices.Sort(*l)
		*l = slices.Compact(*l)
	}
	if u.Clusters == nil {
		u.Clusters = []string{}
	}
	if len(u.LegacyClusters) == 0 {
		u.LegacyClusters = nil
	}
}

// editUsers applies edit to the lists of remote users and writes the
// ConfigMap only if they changed.
func (c *Cluster) editUsers(ctx context.Context, edit func(remoteUsers) remoteUsers) (bool, error) {
	cms := c.Client.CoreV1().ConfigMaps(c.Namespace)
	cm, err := cms.Get(ctx, configMapUsers, metav1.GetOptions{})
	create := apierrors.IsNotFound(err)
	if create {
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: configMapUsers, Namespace: c.Namespace, Labels: labels()}}
	} else if err != nil {
		return false, fmt.Errorf("context %q: %w", c.Context, err)
	}
	var before remoteUsers
	if err := yaml.Unmarshal([]byte(cm.Data[usersKey]), &before); err != nil {
		return false, fmt.Errorf("context %q: configmap %s: %w", c.Context, configMapUsers, err)
	}
	before.normalize()
	u := edit(remoteUsers{Clusters: slices.Clone(before.Clusters), LegacyClusters: slices.Clone(before.LegacyClusters)})
	u.normalize()
	if slices.Equal(before.Clusters, u.Clusters) && slices.Equal(before.LegacyClusters, u.LegacyClusters) {
		return false, nil
	}
	data, err := yaml.Marshal(u)
	if err != nil {
		return false, err
	}
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[usersKey] = string(data)
	if create {
		_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
	} else {
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	}
	if err != nil {
		return false, fmt.Errorf("context %q: write configmap %s: %w", c.Context, configMapUsers, err)
	}
	return true, nil
}

// Disconnect undoes Connect for the same arguments: each side loses the
// other's entry in its remote-clusters Secret and the other's read-only
// etcd user. Running it again changes nothing.
func Disconnect(ctx context.Context, source *Cluster, dests []*Cluster, mode string, log *slog.Logger) (Result, error) {
	ps, err := pairs(mode, source, dests)
	if err != nil {
		return Result{}, err
	}
	ms, err := readMembers(ctx, append([]*Cluster{source}, dests...))
	if err != nil {
		return Result{}, err
	}
	var res Result
	for _, p := range ps {
		a, b := ms[p[0]], ms[p[1]]
		res.Pairs = append(res.Pairs, Pair{A: a.info.Name, B: b.info.Name})
		log.Info("disconnecting", "a", a.info.Name, "b", b.info.Name)
		for _, dir := range [][2]member{{a, b}, {b, a}} {
			r, e := dir[0], dir[1]
			ok, err := r.c.editRemotes(ctx, func(s *corev1.Secret) error {
				cfgKey, caKey, certKey, keyKey := remoteKeys(e.info.Name)
				for _, k := range []string{cfgKey, caKey, certKey, keyKey} {
					delete(s.Data, k)
				}
				delete(s.Annotations, idAnnotationPrefix+e.info.Name)
				return nil
			})
			if err != nil {
				return res, err
			}
			if ok {
				res.Changed = append(res.Changed, r.c.Context+": secret/"+secretRemoteClusters)
			}
			ok, err = e.c.editUsers(ctx, func(u remoteUsers) remoteUsers {
				u.Clusters = slices.DeleteFunc(u.Clusters, func(c string) bool { return c == r.info.Name })
				u.LegacyClusters = slices.DeleteFunc(u.LegacyClusters, func(c string) bool { return c == r.info.Name })
				return u
			})
			if err != nil {
				return res, err
			}
			if ok {
				log.Info("removed read-only etcd user", "cluster", e.info.Name, "reader", r.info.Name)
				res.Changed = append(res.Changed, e.c.Context+": configmap/"+configMapUsers)
			}
		}
	}
	return res, nil
}
