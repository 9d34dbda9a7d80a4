"""``python -m examples.seed002_proxy``: see ``examples/seed002_proxy/__init__.py``."""

from .run import main

raise SystemExit(main())
