"""``python -m agent``: the same as ``ctpl-agent``."""

from .cli import main

raise SystemExit(main())
