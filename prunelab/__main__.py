"""``python -m prunelab`` = the ``prunelab`` CLI."""

from prunelab.cli import main

main()
