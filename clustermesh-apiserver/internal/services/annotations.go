package services

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Service annotations, with Cilium's older aliases.
const (
	GlobalAnnotation        = "service.cilium.io/global"
	GlobalAnnotationAlias   = "io.cilium/global-service"
	SharedAnnotation        = "service.cilium.io/shared"
	SharedAnnotationAlias   = "io.cilium/shared-service"
	AffinityAnnotation      = "service.cilium.io/affinity"
	AffinityAnnotationAlias = "io.cilium/service-affinity"
)

// annotation returns the value of the first of keys present on svc.
func annotation(svc *corev1.Service, keys ...string) (string, bool) {
	for _, k := range keys {
		if v, ok := svc.Annotations[k]; ok {
			return v, true
		}
	}
	return "", false
}

// IsGlobal reports whether svc is a global service: its global annotation
// (the current name wins over the alias) is "true", in any letter case. Any
// other value, including malformed ones, means not global.
func IsGlobal(svc *corev1.Service) bool {
	v, ok := annotation(svc, GlobalAnnotation, GlobalAnnotationAlias)
	return ok && strings.EqualFold(strings.TrimSpace(v), "true")
}

// IsShared reports whether a global svc exports its own backends. Without a
// shared annotation a global service is shared; with one, only "true" (any
// case) shares: a malformed value does not export, the safe side.
func IsShared(svc *corev1.Service) bool {
	if !IsGlobal(svc) {
		return false
	}
	v, ok := annotation(svc, SharedAnnotation, SharedAnnotationAlias)
	if !ok {
		return true
	}
	return strings.EqualFold(strings.TrimSpace(v), "true")
}

// Exported reports whether svc is published: global and shared, and of a type
// that has cluster endpoints (not ExternalName).
func Exported(svc *corev1.Service) bool {
	return svc.Spec.Type != corev1.ServiceTypeExternalName && IsGlobal(svc) && IsShared(svc)
}
