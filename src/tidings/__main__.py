"""``python -m tidings`` runs the ``tidings`` command."""

import sys

from tidings.cli import main

sys.exit(main())
