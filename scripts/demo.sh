#!/usr/bin/env bash
# The README's demo command: install into .venv and run a simulated smart pole, an edge agent
# and the hub in one process, on embedded defaults (no servers needed). Extra arguments go to
# `iotctl demo` (e.g. --api-port 8081, --mqtt mqtt://127.0.0.1:1883, --influxdb http://127.0.0.1:8086).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: Python 3.11 or newer is needed as '$python' (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$python" -m venv .venv; then
    echo "error: could not create .venv; on Debian: apt-get install python3-venv" >&2
    exit 1
  fi
fi
constraints=()
[ -f constraints.txt ] && constraints=(-c constraints.txt)
# installed (editable) once; again only when the dependencies or entry points may have changed
stamp=.venv/.demo-installed
if [ ! -x .venv/bin/iotctl ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
   || { [ -f constraints.txt ] && [ constraints.txt -nt "$stamp" ]; }; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "${constraints[@]}" -e .
  touch "$stamp"
fi
exec .venv/bin/iotctl demo "$@"
