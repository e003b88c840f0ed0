// Package demo is the narrated run behind `make demo`: three meshed
// clusters (package e2e/harness), a global service spread over all of
// them, and an affinity=local service that fails over to the other
// clusters when the first cluster's backends become unready and fails back
// when they return, with each agent's status along the way.
package demo
