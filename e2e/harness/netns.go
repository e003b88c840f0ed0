package harness

import "github.com/clustermesh/clustermesh/internal/netns"

// NS is a named network namespace (as made by `ip netns add`).
type NS = netns.NS
