"""`python -m vlpuda.cli ...`: the same command line as the `vlpuda` script."""

from __future__ import annotations

import sys

from vlpuda.cli import main

sys.exit(main())
