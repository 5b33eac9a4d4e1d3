"""`python -m energydsl` is the `energydsl` command."""

from energydsl.cli import run

run()
