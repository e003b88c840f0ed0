// Package harness brings up several meshed Clustermesh clusters on one
// machine for the e2e tests and `make demo`: per cluster a real
// kube-apiserver and kube-controller-manager (internal/kubetest) and a
// clustermesh-apiserver process with its embedded etcd; per node a network
// namespace on a shared underlay bridge (the "datacenter network") with a
// `vxlan external` device and a clustermesh-agent process running inside it
// on the eBPF datapath; per pod a network namespace with a veth into its
// node, a Pod object marked Running and Ready with its IP, and an echo
// server (package e2e/echo) answering HTTP and UDP with its cluster and pod
// name.
//
// Clusters are joined with the real CLI (JoinCLI, the default):
// `clustermesh enable` in each cluster and `clustermesh connect
// --connection-mode mesh`. There is no kubelet and no load balancer, so the
// harness plays both: it gives the chart's clustermesh-apiserver Service a
// load balancer address on the datacenter bridge (forwarded to the
// apiserver process's etcd), seeds the apiserver's etcd TLS directory with
// the CA that enable created, starts it with the users ConfigMap that
// connect wrote as its --remote-users-file, and writes the remote-clusters Secret
// into each cluster's agent config directory as a mounted Secret.
// JoinDirect skips the CLI: each apiserver creates the users itself and
// the harness copies the client configs it writes.
//
// The agents read the remote clusters in connection mode kvstoremesh by
// default (each apiserver's kvstoremesh connects once to every remote and
// the agents read its cache in their own cluster's etcd) or in connection
// mode direct (every agent connects to every remote); see kvstoremesh.go.
//
// The processes on loopback (kube-apiservers, the apiservers' etcds) are
// reached from the node namespaces through TCP forwarders that listen on
// the gateway address of the datacenter namespace: nothing listens on or
// targets an address outside loopback and the namespaces the harness made.
//
// Every namespace is named <prefix>-<run>-…, with prefix cmt (tests) or cmd
// (demo), so hack/cleanup.sh removes what an interrupted run left; Close
// kills the processes, unmounts the bpffs pin directories under
// /run/clustermesh-test/<run> and deletes the namespaces. It needs root, the
// ip command and the Kubernetes binaries of hack/kube-bins.sh.
package harness
