"""The ``helo-fast`` command line (``python -m helo_fast``): the parser, the checks of its options, the demo.

``main`` is the entry point (``helo_fast.cli:main``); see ``main.py``.
"""

from .main import main

__all__ = ["main"]
