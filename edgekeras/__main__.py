"""`python -m edgekeras` runs the command-line interface."""

from edgekeras.app.cli import main

raise SystemExit(main())
