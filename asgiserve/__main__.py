"""`python -m asgiserve run TARGET`: the `asgiserve` command without its console script."""

from asgiserve.cli import main

raise SystemExit(main())
