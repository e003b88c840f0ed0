package kubetest

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallCRDs creates the CustomResourceDefinitions of the YAML files of
// fsys (the chart's, deploy.ChartFS). The caller waits until the resources
// are served.
func InstallCRDs(ctx context.Context, dc dynamic.Interface, fsys fs.FS, files ...string) error {
	for _, f := range files {
		data, err := fs.ReadFile(fsys, f)
		if err != nil {
			return fmt.Errorf("read CRD %q: %w", f, err)
		}
		js, err := yaml.YAMLToJSON(data)
		if err != nil {
			return fmt.Errorf("convert CRD %q: %w", f, err)
		}
		var obj map[string]any
		if err := json.Unmarshal(js, &obj); err != nil {
			return fmt.Errorf("decode CRD %q: %w", f, err)
		}
		if _, err := dc.Resource(crdGVR).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("install CRD %q: %w", f, err)
		}
	}
	return nil
}
