"""Alembic migrations of the hub's registry (SQLite and PostgreSQL)."""
