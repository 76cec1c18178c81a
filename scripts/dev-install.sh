#!/usr/bin/env bash
# Developer loop: build the wheel with the fast `dev` profile and install it into .venv.
# Serialised with a lock so that two shells never build or install at once.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 9>/tmp/pymesh-build.lock
flock 9
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check ".[test]" --config-settings=build-args="--profile dev"
