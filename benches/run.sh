#!/usr/bin/env bash
# Proxy benchmark: direct vs pymesh vs nginx vs HAProxy (see benches/README.md).
#   bash benches/run.sh            # full: 5 rounds x 10 s
#   bash benches/run.sh --smoke    # CI: 1 round x 2 s, fails on zero requests or errors
#   bash benches/run.sh --help
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
exec "$py" "$here/proxybench.py" "$@"
