// Package policysync programs the resolved policy (policy.Engine's diffs)
// into a datapath policy writer and accounts for what the datapath reports
// back: it numbers the deciding rules (the datapath's drop events carry the
// number), turns keys into datapath.PolicyKey, keeps the per-identity
// default-deny modes, the unknown identity's mode and the trusted nodes of
// tunnelled traffic, and counts drops per policy, direction and source
// cluster.
package policysync
