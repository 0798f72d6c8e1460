"""Committing: the decision (decide), the protocol that drives it (driver), sources; ingest, resolve, recover."""
