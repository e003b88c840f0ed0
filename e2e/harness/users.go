package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// ErrNoUsersFile is returned by EditRemoteUsers when the cluster's
// apiserver has no users file (JoinDirect, or an external etcd).
var ErrNoUsersFile = errors.New("the apiserver has no remote users file")

// RemoteUsers is the users.yaml of the remote users ConfigMap.
type RemoteUsers struct {
	Clusters       []string `json:"clusters"`
	LegacyClusters []string `json:"legacyClusters,omitempty"`
}

// EditRemoteUsers applies edit to c's remote users ConfigMap (what
// `clustermesh connect` edits) and mounts it for the apiserver.
func (c *Cluster) EditRemoteUsers(ctx context.Context, edit func(*RemoteUsers)) error {
	if c.mesh.cfg.Join != JoinCLI || c.etcdPort == 0 {
		return ErrNoUsersFile
	}
	cms := c.CP.Client.CoreV1().ConfigMaps(meshNamespace)
	cm, err := cms.Get(ctx, configMapUsers, metav1.GetOptions{})
	if err != nil {
		return err
	}
	var u RemoteUsers
	if err := yaml.Unmarshal([]byte(cm.Data["users.yaml"]), &u); err != nil {
		return fmt.Errorf("users of %s: %w", c.Name, err)
	}
	edit(&u)
	data, err := yaml.Marshal(u)
	if err != nil {
		return err
	}
	cm.Data["users.yaml"] = string(data)
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return err
	}
	return c.mountRemoteUsers(ctx)
}

// RemoteConfigFile is the client config the apiserver wrote for the remote
// user of cluster reader (under its --remote-config-dir), named after c.
func (c *Cluster) RemoteConfigFile(reader string) string {
	return filepath.Join(c.remoteDir, reader, c.Name)
}

// EtcdHostEndpoint is the embedded etcd's client URL as the host reaches
// it (the configs the apiserver writes name the load balancer address,
// inside the data-centre namespace).
func (c *Cluster) EtcdHostEndpoint() string {
	return "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(c.etcdPort))
}
