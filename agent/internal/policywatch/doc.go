// Package policywatch feeds the policy engine: it watches NetworkPolicy,
// CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy objects in the own
// cluster's kube-apiserver, decodes them (refusing a whole policy the
// datapath cannot enforce, with the reason in its Refusals, an Event on the
// object and the agent's status), takes identities (reserved, the own
// cluster's and the remote clusters'), and hands every resulting diff, in
// order, to the datapath syncer.
package policywatch
