"""The ``meoring`` command line."""
