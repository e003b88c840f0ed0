// Command echo runs the e2e pods' HTTP and UDP echo server (package
// e2e/echo) inside a pod's network namespace.
package main
