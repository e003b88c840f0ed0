// Package policy resolves network policy into the per-endpoint state a
// datapath writer programs: for every local endpoint identity and direction,
// whether the endpoint is in default-deny there (Enforced) and the set of
// (peer, protocol, port range) keys with their verdict (allow or deny) and
// the rule that produced it.
//
// Inputs are translated policies (package rules), identities (numeric ID →
// labels) of the local cluster, of remote clusters and the reserved ones,
// and the identity and named ports of every pod's ipcache entry
// (UpdateEndpointPorts). Endpoints (subjects) are the identities labelled with the
// local cluster's name; every identity can be a peer.
//
// # Semantics (Cilium's)
//
//   - An endpoint is default-allow in a direction until a spec that selects it
//     enables default deny for that direction; then only allowed traffic
//     passes there.
//   - Deny wins over allow: for one key a deny entry replaces an allow entry,
//     and a lookup that matches any deny entry is denied even if a more
//     specific allow entry matches too.
//   - Peer 0 is the wildcard: every identity and address. CIDR peers are
//     selectors of CIDR identities (package cidridentity), which the engine
//     holds like any other identity.
//   - Protocol ANY with a port expands to TCP, UDP and SCTP; without a port
//     it is the L4 wildcard (protocol 0, port 0). Named ports resolve against
//     the destination: the endpoint itself for ingress, the peer identity for
//     egress; for the wildcard peer, one key per identity that resolves the
//     name. A name resolves for an identity only when all its endpoints
//     declare it alike (keys are per identity: anything else would open a
//     port some endpoints do not name). A name that does not resolve adds
//     nothing.
//
// # Incremental updates
//
// A selector cache holds, per distinct selector, the identities it selects.
// Adding, changing or removing an identity evaluates every cached selector
// once against it; an endpoint that has it as a peer then only gets the keys
// of that one peer recomputed (the identity's own endpoint is recomputed
// whole; a change of what an identity's names resolve to recomputes its own
// endpoint and those with egress named ports). Adding or
// removing a policy evaluates only that policy's selectors against every
// identity and recomputes the endpoints it selects. Every change is returned
// as a Diff: per endpoint and direction, the keys to upsert and delete and
// the enforcement mode. Readers get copies (Endpoint, Snapshot).
//
// Trace answers "would src reach dst on port/proto" from the same resolved
// state and names the rule that decided.
package policy
