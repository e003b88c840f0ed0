// Package agentv1 is the clustermesh-agent status API: protobuf messages and
// the gRPC Status service, generated from status.proto and committed.
package agentv1

//go:generate protoc -I . --plugin=protoc-gen-go=../../protoc-gen-go --plugin=protoc-gen-go-grpc=../../protoc-gen-go-grpc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative status.proto
