"""``python -m leakmap`` runs the command line."""

from leakmap.cli.main import main

main()
