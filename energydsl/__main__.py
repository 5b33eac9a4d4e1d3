"""`python -m energydsl` is the `energydsl` command."""

import sys

from energydsl.cli import main

sys.exit(main())
