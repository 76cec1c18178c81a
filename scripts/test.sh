#!/usr/bin/env bash
# THE one command that runs every check and test of pymesh on a fresh machine (CI runs it
# through .ci/run). It installs what it needs, builds ONE release wheel (the in-tree PEP 517
# backend: maturin, release profile with LTO), installs that wheel with its [test] extra into
# .venv, and then checks and tests the installed package. Fails fast on the first error.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

step() {
    printf '\n==== %s ====\n' "$*"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

step "system packages (nginx, wrk: the benchmark smoke run; curl, openssl: tests/test_clients.py)"
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# chromium, chromium-driver: tests/test_dashboard.py drives the dashboard in headless Chromium
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
else
    echo "already installed: nginx wrk curl openssl"
fi

step "virtualenv .venv"
[ -x .venv/bin/python ] || python3 -m venv .venv
py="$root/.venv/bin/python"
"$py" --version

step "release wheel (pip wheel, in-tree PEP 517 backend)"
rm -rf dist
.venv/bin/pip wheel . --no-deps --disable-pip-version-check -w dist/
wheel="$(ls dist/pymesh-*.whl)"
echo "built: $wheel"

step "install the wheel with its [test] extra"
.venv/bin/pip install --disable-pip-version-check --force-reinstall --no-deps "$wheel"
.venv/bin/pip install --disable-pip-version-check "${wheel}[test]"

step "wheel file list"
"$py" scripts/check_wheel.py "$wheel"

step "rust: cargo fmt --check"
cargo fmt --all --check

step "rust: cargo clippy -D warnings"
PYO3_PYTHON="$py" cargo clippy --workspace --all-targets -- -D warnings

step "rust: cargo test -p pymesh-engine"
PYO3_PYTHON="$py" cargo test -p pymesh-engine

step "python: ruff check"
.venv/bin/ruff check .

step "python: ruff format --check"
.venv/bin/ruff format --check .

step "python: mypy --strict (api staged as pymesh/api, as in the wheel)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp -r pymesh "$stage/"
rm -rf "$stage/pymesh/api"
cp -r api "$stage/pymesh/api"
(cd "$stage" && "$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" pymesh)

step "python: stubtest pymesh._core against the installed module"
(cd "$stage" && rm -rf pymesh && "$py" -m mypy.stubtest pymesh._core)

step "pytest (end-to-end, against the installed wheel)"
# The pytest entry script does not put the repo root on sys.path, so `import pymesh` in the
# tests is the installed wheel (tests/test_install.py asserts this).
.venv/bin/pytest tests -q -p no:cacheprovider

# benches/ is written separately; its smoke run is part of the suite once it exists.
if [ -f benches/run.sh ]; then
    step "benchmark smoke run"
    bash benches/run.sh --smoke
else
    step "benchmark smoke run: benches/run.sh not present, skipped"
fi

step "all checks passed"
