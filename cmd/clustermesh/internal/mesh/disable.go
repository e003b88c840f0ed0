package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/storage/driver"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/internal/meshstatus"
)

// DisableConfig configures Disable.
type DisableConfig struct {
	// Wait waits until the release's pods are gone: the agents remove the
	// datapath from their nodes as they stop.
	Wait    bool
	Timeout time.Duration
}

// DisableResult says what Disable removed.
type DisableResult struct {
	// Uninstalled is true when a release was uninstalled.
	Uninstalled bool
	// Deleted names the Secrets and ConfigMaps deleted besides the release.
	Deleted []string
}

// Disable is the opposite of Enable: it uninstalls the release (the agents
// then clean their nodes up: programs, pins and tunnel device) and deletes
// what Enable and connect created outside it: the CA and the certificate
// Secrets, the remote-clusters Secret, the remote-users ConfigMap and the
// status ConfigMaps. The namespace stays. Clusters connected to this one
// keep its config until `clustermesh disconnect`. Disabling a cluster
// where nothing is left returns ErrNotEnabled.
func Disable(ctx context.Context, c *Cluster, cfg DisableConfig, log *slog.Logger) (DisableResult, error) {
	var res DisableResult
	ac := new(action.Configuration)
	debug := func(format string, v ...any) { log.Debug(fmt.Sprintf(format, v...)) }
	if err := ac.Init(c.Getter, c.Namespace, "secret", debug); err != nil {
		return res, fmt.Errorf("disable %s: helm: %w", c.Context, err)
	}
	un := action.NewUninstall(ac)
	un.Wait, un.Timeout = cfg.Wait, cfg.Timeout
	_, err := un.Run(releaseName)
	switch {
	case errors.Is(err, driver.ErrReleaseNotFound):
		log.Info("no clustermesh release to uninstall", "context", c.Context, "namespace", c.Namespace)
	case err != nil:
		return res, fmt.Errorf("disable %s: helm: %w", c.Context, reachErr(err))
	default:
		res.Uninstalled = true
		log.Info("uninstalled the clustermesh release", "context", c.Context, "namespace", c.Namespace)
	}
	for _, name := range []string{secretCA, secretServer, secretAdmin, secretLocalReader, secretRemoteClusters} {
		err := c.Client.CoreV1().Secrets(c.Namespace).Delete(ctx, name, metav1.DeleteOptions{})
		if err := deleted(&res, "secret/"+name, err); err != nil {
			return res, fmt.Errorf("disable %s: %w", c.Context, err)
		}
	}
	cms := []string{configMapUsers}
	status, err := c.Client.CoreV1().ConfigMaps(c.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: meshstatus.LabelPartOf + "=" + meshstatus.PartOf + "," + meshstatus.LabelComponent,
	})
	if err != nil {
		return res, fmt.Errorf("disable %s: list status: %w", c.Context, reachErr(err))
	}
	for _, cm := range status.Items {
		cms = append(cms, cm.Name)
	}
	for _, name := range cms {
		err := c.Client.CoreV1().ConfigMaps(c.Namespace).Delete(ctx, name, metav1.DeleteOptions{})
		if err := deleted(&res, "configmap/"+name, err); err != nil {
			return res, fmt.Errorf("disable %s: %w", c.Context, err)
		}
	}
	if !res.Uninstalled && len(res.Deleted) == 0 {
		return res, fmt.Errorf("context %q (namespace %s): %w", c.Context, c.Namespace, ErrNotEnabled)
	}
	return res, nil
}

// deleted records a successful delete of what in res; not found is no error.
func deleted(res *DisableResult, what string, err error) error {
	switch {
	case err == nil:
		res.Deleted = append(res.Deleted, what)
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("delete %s: %w", what, reachErr(err))
	}
	return nil
}
