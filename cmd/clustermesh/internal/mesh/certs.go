package mesh

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"maps"
	"net"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/internal/pki"
)

// renewBefore is how long before expiry a certificate is reissued.
const renewBefore = 30 * 24 * time.Hour

func parseCA(certPEM, keyPEM []byte) (*pki.CA, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parse ca: %w", err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("parse ca: key is not ECDSA: %w", pki.ErrInvalidPEM)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parse ca: %w", err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("parse ca: not a CA: %w", pki.ErrInvalidPEM)
	}
	return &pki.CA{Cert: cert, Key: key}, nil
}

func parseCert(certPEM []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil {
		return nil, pki.ErrInvalidPEM
	}
	return x509.ParseCertificate(b.Bytes)
}

// certUsable reports whether certPEM is signed by ca, has common name cn,
// covers hosts and is not about to expire.
func certUsable(certPEM []byte, ca *pki.CA, cn string, hosts []string) bool {
	cert, err := parseCert(certPEM)
	if err != nil || cert.Subject.CommonName != cn || time.Until(cert.NotAfter) < renewBefore {
		return false
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return false
	}
	for _, h := range hosts {
		if cert.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}

// certHosts returns the DNS names and IPs a certificate is valid for.
func certHosts(certPEM []byte) []string {
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil
	}
	hosts := slices.Clone(cert.DNSNames)
	for _, ip := range cert.IPAddresses {
		hosts = append(hosts, ip.String())
	}
	return hosts
}

func labels() map[string]string {
	return map[string]string{"app.kubernetes.io/part-of": "clustermesh", "app.kubernetes.io/managed-by": "clustermesh-cli"}
}

// ensureCA returns the cluster's CA, creating its Secret when missing.
func (c *Cluster) ensureCA(ctx context.Context, cluster string) (*pki.CA, bool, error) {
	s, err := c.Client.CoreV1().Secrets(c.Namespace).Get(ctx, secretCA, metav1.GetOptions{})
	if err == nil {
		ca, err := parseCA(s.Data["ca.crt"], s.Data["ca.key"])
		if err != nil {
			return nil, false, fmt.Errorf("context %q: secret %s: %w", c.Context, secretCA, err)
		}
		return ca, false, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, false, fmt.Errorf("context %q: %w", c.Context, err)
	}
	ca, err := pki.NewCA("clustermesh-ca-" + cluster)
	if err != nil {
		return nil, false, err
	}
	key, err := ca.KeyPEM()
	if err != nil {
		return nil, false, err
	}
	if _, err := c.applySecret(ctx, secretCA, corev1.SecretTypeOpaque, map[string][]byte{"ca.crt": ca.CertPEM(), "ca.key": key}); err != nil {
		return nil, false, err
	}
	return ca, true, nil
}

// readCA reads the cluster's CA (certificate and key).
func (c *Cluster) readCA(ctx context.Context) (*pki.CA, error) {
	s, err := c.Client.CoreV1().Secrets(c.Namespace).Get(ctx, secretCA, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("context %q: read CA secret %s: %w", c.Context, secretCA, err)
	}
	ca, err := parseCA(s.Data["ca.crt"], s.Data["ca.key"])
	if err != nil {
		return nil, fmt.Errorf("context %q: secret %s: %w", c.Context, secretCA, err)
	}
	return ca, nil
}

func (c *Cluster) serviceHosts(cluster string) []string {
	ns := c.Namespace
	return []string{
		serviceAPIServer, serviceAPIServer + "." + ns, serviceAPIServer + "." + ns + ".svc",
		serviceAPIServer + "." + ns + ".svc.cluster.local", cluster + ".mesh.clustermesh.io",
	}
}

// ensureServerCert makes the etcd server certificate cover hosts (plus the
// Service names), keeping the hosts it already covers. It reports whether
// the Secret changed.
func (c *Cluster) ensureServerCert(ctx context.Context, ca *pki.CA, cluster string, hosts []string) (bool, error) {
	want := append(c.serviceHosts(cluster), hosts...)
	s, err := c.Client.CoreV1().Secrets(c.Namespace).Get(ctx, secretServer, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return false, fmt.Errorf("context %q: %w", c.Context, err)
	}
	if err == nil {
		if certUsable(s.Data["tls.crt"], ca, serviceAPIServer, want) && bytes.Equal(s.Data["ca.crt"], ca.CertPEM()) {
			return false, nil
		}
		if certUsable(s.Data["tls.crt"], ca, serviceAPIServer, nil) {
			want = append(certHosts(s.Data["tls.crt"]), want...)
		}
	}
	kp, err := ca.IssueServer(serviceAPIServer, dedupHosts(want)...)
	if err != nil {
		return false, err
	}
	return c.applySecret(ctx, secretServer, corev1.SecretTypeTLS, map[string][]byte{"ca.crt": ca.CertPEM(), "tls.crt": kp.CertPEM, "tls.key": kp.KeyPEM})
}

// ensureClientSecret makes Secret name hold a client certificate of user
// signed by ca.
func (c *Cluster) ensureClientSecret(ctx context.Context, ca *pki.CA, name, user string) (bool, error) {
	s, err := c.Client.CoreV1().Secrets(c.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err == nil && certUsable(s.Data["tls.crt"], ca, user, nil) && bytes.Equal(s.Data["ca.crt"], ca.CertPEM()) {
		return false, nil
	}
	kp, err := ca.IssueClient(user)
	if err != nil {
		return false, err
	}
	return c.applySecret(ctx, name, corev1.SecretTypeTLS, map[string][]byte{"ca.crt": ca.CertPEM(), "tls.crt": kp.CertPEM, "tls.key": kp.KeyPEM})
}

func dedupHosts(hosts []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			h = ip.String()
		}
		if h == "" || seen[h] || h == "localhost" || h == "127.0.0.1" || h == "::1" {
			continue
		}
		seen[h] = true
		out = append(out, h)
	}
	return out
}

// applySecret creates or updates a Secret with exactly data, writing nothing
// when it already holds it. It reports whether it wrote.
func (c *Cluster) applySecret(ctx context.Context, name string, typ corev1.SecretType, data map[string][]byte) (bool, error) {
	secrets := c.Client.CoreV1().Secrets(c.Namespace)
	s, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		s = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: c.Namespace, Labels: labels()}, Type: typ, Data: data}
		if _, err := secrets.Create(ctx, s, metav1.CreateOptions{}); err != nil {
			return false, fmt.Errorf("context %q: create secret %s: %w", c.Context, name, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("context %q: %w", c.Context, err)
	}
	if maps.EqualFunc(s.Data, data, bytes.Equal) {
		return false, nil
	}
	s.Data = data
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("context %q: update secret %s: %w", c.Context, name, err)
	}
	return true, nil
}
