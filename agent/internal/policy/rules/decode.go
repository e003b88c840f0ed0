package rules

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// API groups and kinds understood by Decode.
const (
	KindNetworkPolicy                  = "NetworkPolicy"
	KindCiliumNetworkPolicy            = "CiliumNetworkPolicy"
	KindCiliumClusterwideNetworkPolicy = "CiliumClusterwideNetworkPolicy"
	apiNetworking                      = "networking.k8s.io/v1"
	apiCilium                          = "cilium.io/v2"
)

// maxPolicyBytes bounds one decoded object.
const maxPolicyBytes = 1 << 20

type object struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Metadata   json.RawMessage `json:"metadata"`
	Spec       json.RawMessage `json:"spec"`
	Specs      json.RawMessage `json:"specs"`
	Status     json.RawMessage `json:"status"`
}

type objectMeta struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
}

// Decode decodes one policy object (JSON) of any supported kind and
// translates it. Every error is a *RefusedError.
func Decode(data []byte, opts Options) (Policy, error) {
	refuse := func(key, field, reason string, err error) (Policy, error) {
		return Policy{}, &RefusedError{Policy: key, Field: field, Reason: reason, Err: err}
	}
	if len(data) > maxPolicyBytes {
		return refuse("", "", fmt.Sprintf("object of %d bytes exceeds %d", len(data), maxPolicyBytes), ErrInvalid)
	}
	var obj object
	if err := strictUnmarshal(data, &obj); err != nil {
		return refuse("", "", err.Error(), ErrInvalid)
	}
	var meta objectMeta
	if len(obj.Metadata) > 0 {
		if err := json.Unmarshal(obj.Metadata, &meta); err != nil {
			return refuse("", "metadata", err.Error(), ErrInvalid)
		}
	}
	if meta.Name == "" {
		return refuse("", "metadata.name", "missing name", ErrInvalid)
	}
	switch {
	case obj.APIVersion == apiNetworking && obj.Kind == KindNetworkPolicy:
		key := "knp/" + meta.Namespace + "/" + meta.Name
		if meta.Namespace == "" {
			return refuse(key, "metadata.namespace", "a NetworkPolicy is namespaced", ErrInvalid)
		}
		if len(obj.Specs) > 0 {
			return refuse(key, "specs", "unknown field", ErrInvalid)
		}
		return translateKNP(key, meta.Namespace, obj.Spec, opts)
	case obj.APIVersion == apiCilium && obj.Kind == KindCiliumNetworkPolicy:
		key := "cnp/" + meta.Namespace + "/" + meta.Name
		if meta.Namespace == "" {
			return refuse(key, "metadata.namespace", "a CiliumNetworkPolicy is namespaced", ErrInvalid)
		}
		return translateCNP(key, meta.Namespace, obj.Spec, obj.Specs, opts)
	case obj.APIVersion == apiCilium && obj.Kind == KindCiliumClusterwideNetworkPolicy:
		key := "ccnp/" + meta.Name
		if meta.Namespace != "" {
			return refuse(key, "metadata.namespace", "a CiliumClusterwideNetworkPolicy is cluster-scoped", ErrInvalid)
		}
		return translateCNP(key, "", obj.Spec, obj.Specs, opts)
	}
	return refuse(meta.Name, "kind", fmt.Sprintf("unsupported %s %s", obj.APIVersion, obj.Kind), ErrUnsupported)
}

// DecodeUnstructured decodes an object held as unstructured content (the
// map of k8s.io/apimachinery's Unstructured).
func DecodeUnstructured(obj map[string]any, opts Options) (Policy, error) {
	data, err := json.Marshal(obj)
	if err != nil {
		return Policy{}, &RefusedError{Reason: err.Error(), Err: ErrInvalid}
	}
	return Decode(data, opts)
}

// strictUnmarshal decodes one JSON value, refusing unknown fields and
// trailing data.
func strictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after the object")
	}
	return nil
}

// present reports whether a raw field was given (and not null).
func present(raw json.RawMessage) bool {
	return len(raw) > 0 && strings.TrimSpace(string(raw)) != "null"
}

func sortedKeys(m map[string]json.RawMessage) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
