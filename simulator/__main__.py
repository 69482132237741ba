"""``python -m simulator`` is ``ctpl-sim``."""

import sys

from .cli import main

sys.exit(main())
