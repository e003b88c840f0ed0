package kubetest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Config describes one control plane.
type Config struct {
	// BinDir holds kube-apiserver and kube-controller-manager.
	BinDir string
	// Dir is where etcd data, certificates, keys and logs go.
	Dir string
	// Name names the cluster in the kubeconfig (context, cluster and user).
	Name string
	// ServiceCIDR is the ClusterIP range (default 10.96.0.0/16).
	ServiceCIDR string
	// Controllers lists the kube-controller-manager controllers to run.
	Controllers []string
	// StartTimeout bounds how long Start waits for readiness (default 90s).
	StartTimeout time.Duration
}

func (c *Config) setDefaults() {
	if c.Name == "" {
		c.Name = "kubetest"
	}
	if c.ServiceCIDR == "" {
		c.ServiceCIDR = "10.96.0.0/16"
	}
	if len(c.Controllers) == 0 {
		c.Controllers = []string{
			"endpointslice-controller", "serviceaccount-controller", "serviceaccount-token-controller",
			"namespace-controller", "garbage-collector-controller", "service-cidr-controller",
		}
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 90 * time.Second
	}
}

// ErrNotReady is returned when a component does not become ready in time.
var ErrNotReady = errors.New("control plane not ready")

// ControlPlane is a running etcd + kube-apiserver + kube-controller-manager.
type ControlPlane struct {
	cfg        Config
	log        *slog.Logger
	token      string
	port       int
	etcd       *embed.Etcd
	etcdURL    string
	kubeconfig string

	mu  sync.Mutex
	api *proc // the kube-apiserver process; guarded by mu
	kcm *proc // the kube-controller-manager process; guarded by mu

	// REST is the admin client configuration; Client is built from it.
	REST   *rest.Config
	Client kubernetes.Interface
}

// Start starts etcd, kube-apiserver and kube-controller-manager and waits until
// the API server is ready and the default ServiceAccount machinery works.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*ControlPlane, error) {
	cfg.setDefaults()
	for _, b := range []string{"kube-apiserver", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, b)); err != nil {
			return nil, fmt.Errorf("kubetest: %w", err)
		}
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	cp := &ControlPlane{cfg: cfg, log: log.With("cluster", cfg.Name), token: randomToken()}
	ok := false
	defer func() {
		if !ok {
			cp.Stop()
		}
	}()
	if err := cp.startEtcd(); err != nil {
		return nil, err
	}
	if err := cp.writeFiles(); err != nil {
		return nil, err
	}
	var err error
	if cp.port, err = freePort(); err != nil {
		return nil, err
	}
	cp.REST = &rest.Config{
		Host:            "https://127.0.0.1:" + strconv.Itoa(cp.port),
		BearerToken:     cp.token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		QPS:             500,
		Burst:           1000,
	}
	if cp.Client, err = kubernetes.NewForConfig(cp.REST); err != nil {
		return nil, err
	}
	if err := cp.writeKubeconfig(); err != nil {
		return nil, err
	}
	if err := cp.StartAPIServer(ctx); err != nil {
		return nil, err
	}
	if err := cp.startControllerManager(); err != nil {
		return nil, err
	}
	ok = true
	return cp, nil
}

// Kubeconfig is the path of an admin kubeconfig for this control plane.
func (cp *ControlPlane) Kubeconfig() string { return cp.kubeconfig }

// Name is the cluster's name in the kubeconfig.
func (cp *ControlPlane) Name() string { return cp.cfg.Name }

func (cp *ControlPlane) startEtcd() error {
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	ec := embed.NewConfig()
	ec.Name = "kube-etcd"
	ec.Dir = filepath.Join(cp.cfg.Dir, "etcd")
	// Kubernetes' own etcd: its shutdown noise ("server closed") is not ours
	// to show; a failure surfaces as kube-apiserver errors instead.
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	client, _ := url.Parse("http://127.0.0.1:" + strconv.Itoa(ports[0]))
	peer, _ := url.Parse("http://127.0.0.1:" + strconv.Itoa(ports[1]))
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	ec.InitialCluster = ec.Name + "=" + peer.String()
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return fmt.Errorf("kubetest: start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		return fmt.Errorf("kubetest: etcd: %w", ErrNotReady)
	}
	cp.etcd, cp.etcdURL = e, client.String()
	return nil
}

func (cp *ControlPlane) path(name string) string { return filepath.Join(cp.cfg.Dir, name) }

func (cp *ControlPlane) writeFiles() error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	der := x509.MarshalPKCS1PrivateKey(key)
	if err := os.WriteFile(cp.path("sa.key"), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(cp.path("sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600); err != nil {
		return err
	}
	tokens := cp.token + ",admin,admin,system:masters\n"
	return os.WriteFile(cp.path("tokens.csv"), []byte(tokens), 0o600)
}

func (cp *ControlPlane) writeKubeconfig() error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters[cp.cfg.Name] = &clientcmdapi.Cluster{Server: cp.REST.Host, InsecureSkipTLSVerify: true}
	kc.AuthInfos[cp.cfg.Name] = &clientcmdapi.AuthInfo{Token: cp.token}
	kc.Contexts[cp.cfg.Name] = &clientcmdapi.Context{Cluster: cp.cfg.Name, AuthInfo: cp.cfg.Name}
	kc.CurrentContext = cp.cfg.Name
	cp.kubeconfig = cp.path("kubeconfig")
	return clientcmd.WriteToFile(*kc, cp.kubeconfig)
}

func (cp *ControlPlane) apiServerArgs() []string {
	return []string{
		"--etcd-servers=" + cp.etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--endpoint-reconciler-type=none",
		"--secure-port=" + strconv.Itoa(cp.port),
		"--cert-dir=" + cp.path("apiserver-certs"),
		"--token-auth-file=" + cp.path("tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=" + cp.cfg.ServiceCIDR,
		"--service-account-key-file=" + cp.path("sa.pub"),
		"--service-account-signing-key-file=" + cp.path("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--enable-priority-and-fairness=false",
		"--allow-privileged=true",
		"--profiling=false",
		"--v=0",
	}
}

// StartAPIServer starts kube-apiserver (again, after StopAPIServer) on the same
// port and etcd, and waits until /readyz answers.
func (cp *ControlPlane) StartAPIServer(ctx context.Context) error {
	cmd, err := cp.spawn("kube-apiserver", cp.apiServerArgs())
	if err != nil {
		return err
	}
	cp.mu.Lock()
	cp.api = cmd
	cp.mu.Unlock()
	return cp.waitReady(ctx)
}

// StopAPIServer kills kube-apiserver and waits for it to exit.
func (cp *ControlPlane) StopAPIServer() {
	cp.mu.Lock()
	cmd := cp.api
	cp.api = nil
	cp.mu.Unlock()
	kill(cmd)
}

func (cp *ControlPlane) startControllerManager() error {
	args := []string{
		"--kubeconfig=" + cp.kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
		"--controllers=" + joinComma(cp.cfg.Controllers),
		"--service-account-private-key-file=" + cp.path("sa.key"),
		"--use-service-account-credentials=false",
		"--v=0",
	}
	cmd, err := cp.spawn("kube-controller-manager", args)
	if err != nil {
		return err
	}
	cp.mu.Lock()
	cp.kcm = cmd
	cp.mu.Unlock()
	// A bad flag or controller name makes it exit at once: say so here rather
	// than as a missing EndpointSlice later.
	select {
	case <-cmd.done:
		return fmt.Errorf("kubetest: kube-controller-manager exited: %s", cp.LogTail("kube-controller-manager", 500))
	case <-time.After(time.Second):
		return nil
	}
}

// proc is a child process and the channel closed when it has exited.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed by the goroutine that waits for cmd
}

func (cp *ControlPlane) spawn(bin string, args []string) (*proc, error) {
	logf, err := os.OpenFile(cp.path(bin+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(cp.cfg.BinDir, bin), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The child dies with the test process, even when that is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("kubetest: start %s: %w", bin, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		_ = cmd.Wait()
		logf.Close()
	}()
	return p, nil
}

func (cp *ControlPlane) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, cp.cfg.StartTimeout)
	defer cancel()
	var last error
	for {
		body, err := cp.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && string(body) == "ok" {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("kubetest: kube-apiserver (log %s): %w: %v", cp.path("kube-apiserver.log"), ErrNotReady, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Stop kills both Kubernetes processes and stops etcd. It is safe to call twice.
func (cp *ControlPlane) Stop() {
	cp.mu.Lock()
	kcm, api := cp.kcm, cp.api
	cp.kcm, cp.api = nil, nil
	cp.mu.Unlock()
	kill(kcm)
	kill(api)
	if cp.etcd != nil {
		cp.etcd.Close()
		cp.etcd = nil
	}
}

// kill ends p's whole process group and waits until p has been reaped.
func kill(p *proc) {
	if p == nil {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

func joinComma(s []string) string {
	out := ""
	for i, v := range s {
		if i > 0 {
			out += ","
		}
		out += v
	}
	return out
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}

func freePort() (int, error) {
	p, err := freePorts(1)
	if err != nil {
		return 0, err
	}
	return p[0], nil
}

// freePorts reserves n distinct loopback ports by binding and releasing them.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var out []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// LogTail returns the last n bytes of a component's log ("kube-apiserver" or
// "kube-controller-manager"), for failure messages.
func (cp *ControlPlane) LogTail(component string, n int) string {
	b, err := os.ReadFile(cp.path(component + ".log"))
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
