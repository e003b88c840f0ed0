package version

import (
	"runtime/debug"
)

// Set at link time (see the package doc); empty in a plain `go build`.
var (
	version string
	commit  string
)

// Version is the `git describe` of the build (e.g. v0.1.0 at a release tag,
// v0.1.0-3-g1a2b3c4 after it), or "dev" when it was not stamped.
func Version() string {
	if version != "" {
		return version
	}
	return "dev"
}

// Stamped reports whether the version was set at link time, i.e. the binary
// was built by `make build` or `make images` and its images carry Version()
// as their tag.
func Stamped() bool { return version != "" }

// Commit is the full commit hash of the build, "unknown" when neither the
// linker nor Go's VCS stamping recorded it. A "-dirty" suffix marks a build
// from a tree with uncommitted changes.
func Commit() string {
	if commit != "" {
		return commit
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev == "" {
		return "unknown"
	}
	if modified == "true" {
		rev += "-dirty"
	}
	return rev
}

// String is the one line every binary prints for --version:
// "<version> (commit <hash>)".
func String() string { return Version() + " (commit " + Commit() + ")" }
