"""``python -m bench``: every benchmark, one report (bench/runner.py)."""

import sys

from bench.runner import main

sys.exit(main())
