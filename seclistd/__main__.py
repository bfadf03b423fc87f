"""`python -m seclistd` runs the command-line tool."""

import sys

from seclistd.cli import main

sys.exit(main())
