"""Alembic migrations for the leakmap store (run by ``leakmap.store.db.open_store``)."""
