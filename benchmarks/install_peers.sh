#!/usr/bin/env bash
# Builds the peer tools the benchmarks compare against and that Debian does not ship:
# mongodump and mongorestore from github.com/mongodb/mongo-tools on the Go module proxy.
# The proxy serves no tagged version (its tags, r100.x, are not semver) and the checksum
# database lacks the pseudo-versions, so a pinned pseudo-version is fetched with
# GONOSUMDB for this one module. Cached under the same folder as the test servers.
set -euo pipefail
if [ "$(id -u)" = 0 ]; then cache="${BACKSTOP_CACHE:-/var/cache/backstop}"; else cache="${BACKSTOP_CACHE:-$HOME/.cache/backstop}"; fi
version=v0.0.0-20250715155915-887641268977  # mongo-tools master, July 2025
bin="$cache/go-bin"
if [ -x "$bin/mongodump" ] && [ -x "$bin/mongorestore" ]; then exit 0; fi
export GONOSUMDB=github.com/mongodb/mongo-tools GOFLAGS=-mod=mod
src=$(go mod download -json "github.com/mongodb/mongo-tools@$version" \
      | python3 -c "import json,sys; print(json.load(sys.stdin)['Dir'])")
work="$cache/mongo-tools-src"
rm -rf "$work" && cp -r "$src" "$work" && chmod -R u+w "$work"
mkdir -p "$bin"
(cd "$work" && go build -o "$bin/mongodump" ./mongodump/main && go build -o "$bin/mongorestore" ./mongorestore/main)
echo "built $bin/mongodump and $bin/mongorestore"
