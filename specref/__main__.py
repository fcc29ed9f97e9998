"""`python -m specref ...` (`demo` runs the shipped example: specref/demo.py)."""
import sys

if sys.argv[1:2] == ["demo"]:
    from .demo import main as demo_main

    sys.exit(demo_main(sys.argv[2:]))

from .cli import main

sys.exit(main())
