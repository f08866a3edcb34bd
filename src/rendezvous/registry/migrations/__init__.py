"""Alembic migrations of the registry schema (run by ``rendezvous.registry.migrate``)."""
