// Package echo is the server every e2e pod runs: an HTTP server whose every
// response body is "<cluster> <pod>\n", and a UDP server that answers each
// datagram with "<cluster> <pod> <datagram>". Clients tell from the answer
// which backend served them.
package echo
