"""`python -m energydsl` is the `energydsl` command."""

import sys

from .cli import main

sys.exit(main())
