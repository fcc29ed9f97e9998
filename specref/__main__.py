"""`python -m specref ...`: the command line (specref/app/cli.py)."""
import sys

from .app.cli import main

sys.exit(main())
