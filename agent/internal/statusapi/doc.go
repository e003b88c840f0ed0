// Package statusapi serves the agent's status (api/agent/v1) over gRPC on a
// unix socket, and is the client side of `clustermesh-agent status`: it
// fetches the status and prints it as a table or as JSON (protojson).
package statusapi
