#!/bin/sh
# Install backstop and every driver's client library into a Python environment: the
# steps of deployments/worker/Dockerfile, as one script the image build RUNs (and the
# tests run in a venv, since a Docker engine is not everywhere).
#
#   install.sh PREFIX WHEEL [EXTRAS]
#     PREFIX  the environment's folder; made with `python3 -m venv` unless it has one
#     WHEEL   the backstop wheel (`python -m pip wheel --no-deps -w dist .`)
#     EXTRAS  backstop's optional extras, e.g. mysql (mysqlclient, built against
#             libmariadb-dev: the Dockerfile installs it when EXTRAS is set)
#
# pip's own settings apply (PIP_INDEX_URL, PIP_NO_DEPS, PIP_NO_INDEX, ...), and PYTHON
# names the interpreter that makes the environment (default python3).
set -eu

prefix=$1
wheel=$2
extras=${3:-}

# The Dockerfile passes dist/backstop-*.whl: with an older wheel left in dist/ the glob
# gives two, and the second would be taken for EXTRAS (a baffling pip error).
case $extras in
    *.whl | */*)
        echo "install.sh: more than one wheel given ($wheel $extras ...): keep one in dist/" >&2
        exit 2 ;;
esac
if [ ! -f "$wheel" ]; then
    echo "install.sh: no wheel at $wheel (python -m pip wheel --no-deps -w dist .)" >&2
    exit 2
fi

if [ ! -x "$prefix/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$prefix"
fi
if [ -n "$extras" ]; then
    requirement="backstop[$extras] @ file://$(realpath "$wheel")"
else
    requirement=$(realpath "$wheel")
fi
"$prefix/bin/python" -m pip install --no-cache-dir --disable-pip-version-check "$requirement"

# Fail the build, not the first 3 a.m. run: every flow, the deployments' pull step and
# each technology's client library must import, and both commands must start.
"$prefix/bin/python" - <<'PY'
import importlib

for module in (
    "backstop.flows.backup", "backstop.flows.restore", "backstop.flows.verify",
    "backstop.flows.drill", "backstop.flows.prune", "backstop.deployments.steps",
    "backstop.deployments.serve", "kazoo.client", "pymongo", "psycopg", "pymysql",
    "sqlalchemy", "s3fs", "great_expectations",
):
    importlib.import_module(module)
PY
"$prefix/bin/backstop" --help >/dev/null
"$prefix/bin/python" -m prefect version >/dev/null
echo "backstop installed in $prefix"
