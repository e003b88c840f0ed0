package meshstatus

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
)

// Names and labels of the status ConfigMaps.
const (
	// NamePrefix starts the name of every status ConfigMap.
	NamePrefix = "clustermesh-status-"
	// DataKey holds the JSON report.
	DataKey = "status.json"
	// LabelPartOf and PartOf mark every object of the product.
	LabelPartOf = "app.kubernetes.io/part-of"
	PartOf      = "clustermesh"
	// LabelComponent says which component wrote a status ConfigMap.
	LabelComponent = "clustermesh.io/status"
	// ComponentAgent and ComponentAPIServer are the LabelComponent values.
	ComponentAgent     = "agent"
	ComponentAPIServer = "apiserver"
)

// ErrInvalidReport is returned for a report that cannot be encoded or decoded.
var ErrInvalidReport = errors.New("invalid status report")

// ConfigMaps is the part of client-go that Publish and List use; a
// kubernetes.Interface's CoreV1() satisfies it.
type ConfigMaps = corev1client.ConfigMapsGetter

// maxNameLen is the longest ConfigMap name (a DNS subdomain).
const maxNameLen = 253

func objectName(component, node string) string {
	name := NamePrefix + component
	if node == "" {
		return name
	}
	name += "-" + strings.ToLower(node)
	if len(name) > maxNameLen {
		sum := sha256.Sum256([]byte(node))
		name = name[:maxNameLen-17] + "-" + hex.EncodeToString(sum[:8])
	}
	return name
}

// ObjectName is the name of the ConfigMap that holds r.
func ObjectName(r Report) string { return r.objectName() }

// Publish writes r into its ConfigMap in namespace, creating it if needed.
// It writes nothing when the stored report is already equal, so callers may
// publish on every change without loading the API server.
func Publish(ctx context.Context, c ConfigMaps, namespace string, r Report) error {
	r.prepare()
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("publish status: %w: %w", ErrInvalidReport, err)
	}
	cms := c.ConfigMaps(namespace)
	name := r.objectName()
	cm, err := cms.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		cm = &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{
				Name:      name,
				Namespace: namespace,
				Labels:    map[string]string{LabelPartOf: PartOf, LabelComponent: r.component()},
			},
			Data: map[string]string{DataKey: string(data)},
		}
		_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return Publish(ctx, c, namespace, r)
		}
		if err != nil {
			return fmt.Errorf("publish status %s/%s: %w", namespace, name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("publish status %s/%s: %w", namespace, name, err)
	}
	if cm.Data[DataKey] == string(data) && cm.Labels[LabelComponent] == r.component() {
		return nil
	}
	if cm.Labels == nil {
		cm.Labels = map[string]string{}
	}
	cm.Labels[LabelPartOf], cm.Labels[LabelComponent] = PartOf, r.component()
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[DataKey] = string(data)
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("publish status %s/%s: %w", namespace, name, err)
	}
	return nil
}

// Delete removes the ConfigMap of r, for example when an agent leaves for
// good. A missing ConfigMap is not an error.
func Delete(ctx context.Context, c ConfigMaps, namespace string, r Report) error {
	err := c.ConfigMaps(namespace).Delete(ctx, r.objectName(), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete status %s/%s: %w", namespace, r.objectName(), err)
	}
	return nil
}

// Reports is everything published in one namespace.
type Reports struct {
	// APIServers holds at most one report per cluster in practice.
	APIServers []APIServerReport
	// Agents is sorted by node name.
	Agents []AgentReport
	// Invalid names the ConfigMaps whose report could not be decoded, with
	// the reason.
	Invalid []string
}

// List reads every report in namespace. Undecodable reports are named in
// Reports.Invalid rather than failing the whole listing.
func List(ctx context.Context, c ConfigMaps, namespace string) (Reports, error) {
	sel := LabelPartOf + "=" + PartOf + "," + LabelComponent
	list, err := c.ConfigMaps(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return Reports{}, fmt.Errorf("list status in %s: %w", namespace, err)
	}
	var out Reports
	for _, cm := range list.Items {
		data, ok := cm.Data[DataKey]
		if !ok {
			out.Invalid = append(out.Invalid, cm.Name+": no "+DataKey)
			continue
		}
		switch cm.Labels[LabelComponent] {
		case ComponentAgent:
			var r AgentReport
			if err := decode(data, &r.Version, &r); err != nil {
				out.Invalid = append(out.Invalid, cm.Name+": "+err.Error())
				continue
			}
			sortRemotes(r.Remotes)
			out.Agents = append(out.Agents, r)
		case ComponentAPIServer:
			var r APIServerReport
			if err := decode(data, &r.Version, &r); err != nil {
				out.Invalid = append(out.Invalid, cm.Name+": "+err.Error())
				continue
			}
			out.APIServers = append(out.APIServers, r)
		default:
			out.Invalid = append(out.Invalid, cm.Name+": unknown component "+cm.Labels[LabelComponent])
		}
	}
	slices.SortFunc(out.Agents, func(a, b AgentReport) int { return strings.Compare(a.Node, b.Node) })
	slices.SortFunc(out.APIServers, func(a, b APIServerReport) int { return strings.Compare(a.Cluster, b.Cluster) })
	slices.Sort(out.Invalid)
	return out, nil
}

func decode(data string, version *int, v any) error {
	if err := json.Unmarshal([]byte(data), v); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidReport, err)
	}
	if *version > SchemaVersion {
		return fmt.Errorf("%w: schema version %d is newer than %d", ErrInvalidReport, *version, SchemaVersion)
	}
	return nil
}

func sortRemotes(rs []Remote) {
	slices.SortFunc(rs, func(a, b Remote) int { return strings.Compare(a.Name, b.Name) })
}
