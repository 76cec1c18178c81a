"""Check the file list of a built pymesh wheel.

The wheel must hold the compiled core, its stub and ``py.typed``, and the admin layer under
the pymesh namespace (``pymesh/api``, with the dashboard's static files in ``pymesh/api/ui``);
it must put nothing else at the top of site-packages (in particular no bare ``api/``
package, which a user's own ``api`` would clash with).

Usage: python scripts/check_wheel.py dist/pymesh-*.whl
"""

from __future__ import annotations

import fnmatch
import sys
import zipfile

REQUIRED = [
    "pymesh/_core*.so",
    "pymesh/_core.pyi",
    "pymesh/py.typed",
    "pymesh/api/__init__.py",
    "pymesh/api/ui/index.html",
    "pymesh/api/ui/app.js",
    "pymesh/api/ui/style.css",
]


def check(path: str) -> list[str]:
    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()
    problems: list[str] = []
    print(f"{path}: {len(names)} files")
    for pattern in REQUIRED:
        hits = fnmatch.filter(names, pattern)
        if hits:
            print(f"  ok   {pattern}: {', '.join(hits)}")
        else:
            problems.append(f"missing {pattern}")
            print(f"  FAIL {pattern}: not in the wheel")
    tops = sorted({name.split("/", 1)[0] for name in names})
    print(f"  top-level entries: {', '.join(tops)}")
    for top in tops:
        allowed = top == "pymesh" or (top.startswith("pymesh-") and top.endswith(".dist-info"))
        if not allowed:
            problems.append(f"unexpected top-level entry {top!r}")
            print(f"  FAIL top-level entry {top!r}: only pymesh/ and pymesh-*.dist-info/ allowed")
    if not any(t.startswith("pymesh-") and t.endswith(".dist-info") for t in tops):
        problems.append("no pymesh-*.dist-info/")
        print("  FAIL no pymesh-*.dist-info/ directory")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} WHEEL", file=sys.stderr)
        return 2
    problems = check(argv[1])
    if problems:
        print(f"wheel check FAILED: {'; '.join(problems)}", file=sys.stderr)
        return 1
    print("wheel check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
