package services

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/clustermesh/clustermesh/internal/annotation"
)

// Exported reports whether svc is published, given its annotations as
// annotation.Parse read them (the agent reads them with the same parser):
// global and shared, and of a type that has cluster endpoints (not
// ExternalName).
func Exported(svc *corev1.Service, ann annotation.Service) bool {
	return svc.Spec.Type != corev1.ServiceTypeExternalName && ann.Exported()
}
