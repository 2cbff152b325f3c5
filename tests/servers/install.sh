#!/usr/bin/env bash
# Installs the servers the integration tests run, idempotently. Downloads are cached
# under $BACKSTOP_CACHE (default /var/cache/backstop when root, ~/.cache/backstop
# otherwise), outside the clone. Without root, missing Debian packages are reported
# and the tests that need them skip (or fail, when CI is set).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ "$(id -u)" = 0 ]; then cache="${BACKSTOP_CACHE:-/var/cache/backstop}"; else cache="${BACKSTOP_CACHE:-$HOME/.cache/backstop}"; fi
mkdir -p "$cache"
status=0

apt_install() {  # apt_install CHECK_PATH PACKAGE...
  local check="$1"; shift
  [ -e "$check" ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "install.sh: not root; cannot install $* (tests needing it will skip)" >&2
    return 0
  fi
  if [ ! -f "$cache/.apt-updated" ] || [ -n "$(find "$cache/.apt-updated" -mmin +720)" ]; then
    apt-get update -qq && touch "$cache/.apt-updated"
  fi
  # Packages must not start their services (the tests run their own instances):
  # policy-rc.d answering 101 is Debian's switch for that.
  local policy=/usr/sbin/policy-rc.d made_policy=""
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || { echo "install.sh: apt-get install $* failed" >&2; status=1; }
  if [ -n "$made_policy" ]; then rm -f "$policy"; fi
}

# ZooKeeper 3.8: Debian's package (its jar's manifest names its dependencies).
apt_install /usr/share/java/zookeeper.jar zookeeper
apt_install /usr/share/java/servlet-api.jar libservlet-api-java  # its admin server needs it

# PostgreSQL and MariaDB servers (Schemaless shards): Debian's packages. The fixtures
# run their own instances in throwaway folders; the packages' own services are not used.
apt_install /usr/sbin/mariadbd mariadb-server
apt_install /usr/include/mariadb/mysql.h libmariadb-dev pkg-config  # to build mysqlclient
if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
  apt_install /nonexistent-postgres-server postgresql
fi

# Prometheus (scrapes `backstop metrics --listen`) and promtool (checks the alert rules
# in deployments/prometheus/): Debian's package; the fixture runs its own instance.
apt_install /usr/bin/promtool prometheus

# systemd-analyze checks the worker's systemd units (tests/test_wheel_deployment.py).
apt_install /usr/bin/systemd-analyze systemd
# The reference age tool: encrypted backups decrypt with it (tests/test_crypto.py).
apt_install /usr/bin/age age

# ZooKeeper 3.9: Apache's jars from Maven Central.
zk39="$cache/zookeeper-3.9.5/lib"
if [ ! -f "$zk39/zookeeper-3.9.5.jar" ]; then
  mvn -q -B -f "$here/zookeeper-3.9/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$zk39.partial" && mv "$zk39.partial" "$zk39" \
    || { echo "install.sh: fetching ZooKeeper 3.9.5 failed" >&2; status=1; }
fi

# FerretDB v1 (a MongoDB wire-protocol server) from the Go module proxy. A plain
# `go install ...@v1.24.2` builds a binary that panics at start: the module lacks the
# build/version/version.txt its own build task generates. So build the same module
# source with that file written, as `bin/task gen-version` would.
ferret="$cache/go-bin/ferretdb"
if [ ! -x "$ferret" ]; then
  if command -v go >/dev/null 2>&1; then
    src=$(go mod download -json github.com/FerretDB/FerretDB@v1.24.2 \
          | python3 -c "import json,sys; print(json.load(sys.stdin)['Dir'])") \
      && rm -rf "$cache/ferretdb-src" && cp -r "$src" "$cache/ferretdb-src" \
      && chmod -R u+w "$cache/ferretdb-src" \
      && echo v1.24.2 > "$cache/ferretdb-src/build/version/version.txt" \
      && (cd "$cache/ferretdb-src" && go build -o "$ferret" ./cmd/ferretdb) \
      || { echo "install.sh: building FerretDB v1.24.2 failed" >&2; status=1; }
  else
    echo "install.sh: no Go toolchain; cannot build FerretDB (docstore tests will skip)" >&2
  fi
fi

exit $status
