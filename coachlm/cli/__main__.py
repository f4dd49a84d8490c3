"""`python -m coachlm.cli ...` (tests, benchmarks)."""

from coachlm.cli.app import main

main()
