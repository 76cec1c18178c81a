#!/usr/bin/env bash
# Proxy benchmark suite: direct vs pymesh vs nginx vs HAProxy (see benches/README.md).
#   bash benches/run.sh            # full: every scenario, 5 rounds x 10 s, plots
#   bash benches/run.sh --smoke    # CI: every scenario 1 round x 1 s, no plots; fails on errors
#   bash benches/run.sh --help
# Full runs use a venv with matplotlib for the plots (benches/.venv, or $BENCH_VENV), made on
# first use; smoke runs use plain python3 (standard library only) and draw no plots.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-}"
smoke=0
for a in "$@"; do
    case "$a" in --smoke | --no-plots | -h | --help) smoke=1 ;; esac
done
if [ -z "$py" ]; then
    py=python3
    if [ "$smoke" = 0 ]; then
        venv="${BENCH_VENV:-$here/.venv}"
        if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import matplotlib" 2>/dev/null; then
            echo "[run.sh] making $venv with matplotlib (for the plots)" >&2
            if python3 -m venv "$venv" && "$venv/bin/pip" install -q matplotlib; then
                py="$venv/bin/python"
            else
                echo "[run.sh] matplotlib unavailable: no plots" >&2
            fi
        else
            py="$venv/bin/python"
        fi
    fi
fi
if [ "$smoke" = 1 ]; then
    case " $* " in *" --no-plots "*) ;; *) set -- "$@" --no-plots ;; esac
fi
exec "$py" "$here/proxybench.py" "$@"
