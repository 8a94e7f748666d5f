"""`python -m bench` (from the repo root) = bench/run.sh."""

import sys

from bench.harness import main

sys.exit(main())
