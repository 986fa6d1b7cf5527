"""``python -m hookstream.cli``."""

import sys

from .app import main

sys.exit(main())
