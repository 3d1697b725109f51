"""``python -m serrano ...`` is the ``serrano`` command."""

from .cli import main

raise SystemExit(main())
