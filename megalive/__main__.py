"""`python -m megalive ...` is the `megalive` command."""

import sys

from megalive.cli import main

sys.exit(main())
