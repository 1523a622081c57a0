"""The ``warmgraph`` command line (click). Nothing in warmgraph imports this package."""
