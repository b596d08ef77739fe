"""``python -m helo_fast`` = the ``helo-fast`` command (train, eval, demo)."""

import sys

from .cli import main

sys.exit(main())
