"""``python -m protoseg`` runs the command-line interface."""

import sys

from protoseg.cli import main

sys.exit(main())
