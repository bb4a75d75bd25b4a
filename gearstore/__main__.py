"""``python -m gearstore``."""

from gearstore.cli import main

raise SystemExit(main())
