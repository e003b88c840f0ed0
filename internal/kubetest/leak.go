package kubetest

import "go.uber.org/goleak"

// LeakOptions are the goleak options for a TestMain of a package whose tests
// talk to a control plane: client-go's HTTP/2 transports keep idle-connection
// readers and klog its flush daemon for the life of the process.
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		goleak.IgnoreAnyFunction("golang.org/x/net/http2.(*ClientConn).readLoop"),
	}
}
