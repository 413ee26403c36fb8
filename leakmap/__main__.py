"""``python -m leakmap`` runs the command line."""

from leakmap.cli.launch import main

main()
