"""``python -m adcore`` is the ``adcore`` command."""

import sys

from adcore.cli import main

sys.exit(main())
