// Package kubenode brings up real Kubernetes clusters on one machine for the
// install test (e2e TestInstallOnKubelets): per cluster the control plane of
// internal/kubetest (etcd, kube-apiserver, kube-controller-manager) plus
// kube-scheduler on the host's loopback, and per node a network namespace
// holding its own containerd (own root, state and socket), a kubelet and
// kube-proxy (iptables mode). Pods get their network from the standard CNI
// plugins (ptp, host-local); images come from the OCI archives of
// internal/ociimage, imported with `ctr images import`, so nothing is pulled.
//
// Layout (run id R, cluster k = 1, 2, node 1):
//
//	cme-R-dc       datacenter namespace: bridge cme-br 172.31.0.1/24 and TCP
//	               forwarders from 172.31.0.1:<port> to each kube-apiserver
//	cme-R-ckn1     node namespace: eth0 172.31.0.<10k+1>/24 on the bridge,
//	               default route via 172.31.0.1; containerd, kubelet,
//	               kube-proxy; pod CIDR 10.k.1.0/24, service CIDR 10.96.k.0/24
//	/run/clustermesh-test/kube-R/<node>/   containerd root and state, kubelet
//	               root, CNI config and IPAM, pod netns mounts, bpffs
//
// The `kubernetes` Service of each cluster points at its forwarder (an
// EndpointSlice the package writes), so pods (the agent DaemonSet, the
// clustermesh-apiserver) reach their kube-apiserver in-cluster through
// kube-proxy. Pod traffic leaving a node through eth0 is masqueraded to the
// node's address (the datacenter routes no pod CIDR), so a pod also reaches
// the other cluster's NodePort. Node.Exec runs a command in a pod's
// container through the node's containerd, as `kubectl exec` would. Close removes everything, also after a failed Start;
// hack/cleanup.sh removes what a killed run left.
package kubenode
