#!/usr/bin/env bash
# Prints the version every binary and image of this tree carries: the
# `git describe` of HEAD against the release tags (v0.1.0 at a release,
# v0.1.0-3-g1a2b3c4 after it, the short hash before the first tag, a
# -dirty suffix for uncommitted changes). With --commit, the full hash.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --commit ]; then
  git rev-parse HEAD
else
  git describe --tags --match 'v[0-9]*' --always --dirty
fi
