// Package kubereach watches whether a daemon's own kube-apiserver answers
// and logs, rate-limited, while it does not: once when it becomes
// unreachable, again at most every RepeatEvery while it stays so, and once
// when it answers again. Both clustermesh-agent and clustermesh-apiserver
// run one.
package kubereach
