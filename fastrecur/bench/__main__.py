"""``python -m fastrecur.bench``."""

from .cli import main

raise SystemExit(main())
