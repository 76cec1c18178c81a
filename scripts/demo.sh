#!/usr/bin/env bash
# The one command that sets up and runs the embedded demo on a fresh machine:
# two demo services (hello-v1, hello-v2), a listener on 127.0.0.1:8080 with a 90/10 split,
# and the admin API on 127.0.0.1:9901. Extra arguments go to `pymesh run`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check .
exec .venv/bin/pymesh run "$@"
