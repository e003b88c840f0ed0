// Package runner runs the long-running parts of a process together: every
// part is a Run(ctx) error, and the process lives exactly as long as all of
// them. A part that returns, with an error or without one, before it was
// asked to stop, stops the others and the process.
package runner
