"""``python -m fedsync.demo``: the demo (same options as ``fedsync demo``), or one of its devices."""

import sys

if len(sys.argv) > 1 and sys.argv[1] == "device":
    from .device import main

    sys.exit(main(sys.argv[2:]))

from ..cli import main as cli_main

sys.exit(cli_main(["demo", *sys.argv[1:]]))
