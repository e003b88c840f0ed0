package mesh

import (
	"slices"
	"testing"

	"github.com/clustermesh/clustermesh/internal/meshstatus"
)

func TestRefusedPolicies(t *testing.T) {
	l7 := meshstatus.PolicyRefusal{Policy: "cnp/shop/l7", Reason: "L7 rules"}
	fqdn := meshstatus.PolicyRefusal{Policy: "ccnp/fqdn", Reason: "toFQDNs"}
	for _, tc := range []struct {
		name   string
		agents []meshstatus.AgentReport
		want   []string
	}{
		{"none", []meshstatus.AgentReport{{Node: "n1"}}, []string{}},
		{"said once for every agent", []meshstatus.AgentReport{
			{Node: "n1", RefusedPolicies: []meshstatus.PolicyRefusal{l7, fqdn}},
			{Node: "n2", RefusedPolicies: []meshstatus.PolicyRefusal{l7}},
		}, []string{
			"policy cnp/shop/l7 refused by 2 agent(s), not enforced: L7 rules",
			"policy ccnp/fqdn refused by 1 agent(s), not enforced: toFQDNs",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := refusedPolicies(tc.agents); !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
