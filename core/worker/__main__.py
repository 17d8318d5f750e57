"""``python -m core.worker``: the worker's command line."""

from __future__ import annotations

import sys

from .main import main

sys.exit(main())
