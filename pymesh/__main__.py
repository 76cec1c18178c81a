"""``python -m pymesh``: the same CLI as the ``pymesh`` console script."""

from pymesh.cli import main

raise SystemExit(main())
