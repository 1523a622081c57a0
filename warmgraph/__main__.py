"""``python -m warmgraph`` runs the command line."""

from warmgraph.cli.main import main

main()
