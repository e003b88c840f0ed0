package localcluster

import corev1 "k8s.io/api/core/v1"

// serviceProxyName is the label by which a Service names the proxy that
// serves it instead of kube-proxy.
const serviceProxyName = "service.kubernetes.io/service-proxy-name"

// proxyOnly is why, beside kube-proxy, svc stays the node's service proxy's
// when it is not global (servicemerge.LocalService.ProxyOnly): "" when the
// datapath does what kube-proxy would.
func proxyOnly(svc *corev1.Service) string {
	switch {
	case svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP:
		return "sessionAffinity ClientIP"
	case svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal:
		return "internalTrafficPolicy Local"
	case svc.Labels[serviceProxyName] != "":
		return serviceProxyName + " " + svc.Labels[serviceProxyName]
	}
	return ""
}
