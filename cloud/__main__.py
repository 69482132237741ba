"""``python -m cloud`` is ``ctpl-cloud``."""

import sys

from .cli import main

sys.exit(main())
