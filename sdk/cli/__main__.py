"""``python -m edgerec.sdk.cli …`` runs the ``edgerec`` command (where the console script is not on PATH)."""
import sys

from edgerec.sdk.cli import main

sys.exit(main())
