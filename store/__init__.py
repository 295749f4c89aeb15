"""Shared schema, settings and database access for every component."""
