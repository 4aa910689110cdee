"""Alembic migrations of the hub's store (run with ``meoring db upgrade``)."""
