"""`python -m edgekeras` runs the command-line interface."""

from edgekeras.cli import main

raise SystemExit(main())
