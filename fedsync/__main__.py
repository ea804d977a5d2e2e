"""``python -m fedsync``: the ``fedsync`` command."""

import sys

from .cli import main

sys.exit(main())
