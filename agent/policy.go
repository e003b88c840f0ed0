package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/agent/internal/daemon"
	"github.com/clustermesh/clustermesh/agent/internal/statusapi"
	agentv1 "github.com/clustermesh/clustermesh/api/agent/v1"
)

// newPolicyCommand asks the running agent for its resolved network policy:
// the state its datapath is programmed from.
func newPolicyCommand() *cobra.Command {
	var socket, output string
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Show the resolved network policy of this node's endpoints and trace flows against it",
	}
	cmd.PersistentFlags().StringVar(&socket, "status-socket", daemon.DefaultStatusSocket, "unix socket of the agent's status API")
	cmd.PersistentFlags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	get := &cobra.Command{
		Use:   "get [namespace/pod | identity | labels]",
		Short: "The resolved policy of an endpoint (every local endpoint without an argument): peers × ports × verdict, with the deciding rule",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			ep := ""
			if len(args) == 1 {
				ep = args[0]
			}
			resp, err := statusapi.FetchPolicy(ctx, socket, ep)
			if err != nil {
				return err
			}
			return statusapi.PrintPolicy(cmd.OutOrStdout(), resp, output == "json")
		},
	}
	var src, dst, dport string
	trace := &cobra.Command{
		Use:   "trace --src <namespace/pod | identity | labels> --dst <...> --dport 80/TCP",
		Short: "Whether a flow is allowed, and by which rule: egress at the source, ingress at the destination",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			port, proto, err := parsePortProto(dport)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			resp, err := statusapi.Trace(ctx, socket, &agentv1.TracePolicyRequest{Src: src, Dst: dst, Dport: port, Protocol: proto})
			if err != nil {
				return err
			}
			return statusapi.PrintTrace(cmd.OutOrStdout(), resp, output == "json")
		},
	}
	trace.Flags().StringVar(&src, "src", "", "source: namespace/pod of this node, an identity number, labels k=v,..., or an address (the identity the datapath gives it: a pod's, a CIDR identity or world)")
	trace.Flags().StringVar(&dst, "dst", "", "destination, as --src; the address of a Service frontend the agent translates (with --dport its port) is traced to each of its backends, as the datapath decides")
	trace.Flags().StringVar(&dport, "dport", "", "destination port and protocol, e.g. 80/TCP (protocol defaults to TCP)")
	cmd.AddCommand(get, trace)
	return cmd
}

// parsePortProto parses "80/TCP", "53/udp" or "80".
func parsePortProto(s string) (uint32, string, error) {
	p, proto, _ := strings.Cut(s, "/")
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return 0, "", fmt.Errorf("--dport %q: want PORT[/PROTOCOL]", s)
	}
	return uint32(n), strings.ToUpper(proto), nil
}
