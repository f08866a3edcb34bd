#!/usr/bin/env bash
# The serving benchmark's environments on a machine that reaches no package index (the
# 16-core machine of bench/results/scaleout-16, say), from wheels carried there:
#
#   bench/offline_venvs.sh WHEELS [SITE]
#
# WHEELS/main/*.whl   the project's and the harness's packages that SITE lacks
# WHEELS/mlserver/*.whl  MLServer's, which needs older FastAPI and uvloop (requirements-mlserver.txt)
# WHEELS/bin/wrk, WHEELS/lib/  wrk and the libraries it links, when the machine has none
# SITE                a site-packages folder with the heavy packages already installed (numpy,
#                     scikit-learn, pandas, pyarrow...); default: that of `python3`
#
# Makes .venv (the project, editable, plus the harness: bench/.venv links to it) and
# bench/.venv-mlserver, each seeing SITE after its own packages, and marks the benchmark's
# venvs current so `python -m bench.serving` uses them as they are. Nothing is downloaded.
set -euo pipefail
wheels=$(cd "${1:?usage: bench/offline_venvs.sh WHEELS [SITE]}" && pwd)
python=${PYTHON:-python3}
site=${2:-$($python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

pip_in() {  # DIR PIP_ARGS...: the venv's own pip, or this Python's where venv has no ensurepip
    local dir=$1
    shift
    if [ -x "$dir/bin/pip" ]; then "$dir/bin/python" -m pip "$@"
    else $python -m pip --python "$dir/bin/python" "$@"; fi
}

make_venv() {  # DIR WHEEL_SUBFOLDER
    local dir=$1 sub=$2
    $python -m venv "$dir" 2>/dev/null || $python -m venv --without-pip "$dir"
    local own
    own=$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$site" > "$own/_offline_site.pth"  # after the venv's own packages
    pip_in "$dir" install -q --no-index --no-deps --no-compile --no-cache-dir "$wheels/$sub"/*.whl
}

make_venv .venv main
pip_in .venv install -q --no-index --no-deps --no-build-isolation -e .
ln -sfn ../.venv bench/.venv
make_venv bench/.venv-mlserver mlserver

if [ -x "$wheels/bin/wrk" ] && ! command -v wrk >/dev/null; then
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$wheels/lib" "$wheels/bin/wrk" \
        > .venv/bin/wrk
    chmod +x .venv/bin/wrk
fi

.venv/bin/python - <<'EOF'
from bench.venv import BENCH, MLSERVER
for env in (BENCH, MLSERVER):
    env.mark_current()  # installed from wheels: current as it is
EOF
.venv/bin/python -c 'import rendezvous, fastapi, gunicorn, skops, sklearn; print("project venv ok")'
bench/.venv-mlserver/bin/python -c 'import mlserver, mlserver_sklearn; print("mlserver venv ok")'
