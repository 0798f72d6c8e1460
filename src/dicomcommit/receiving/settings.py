"""The receiver's defaults, importable without pynetdicom (the CLI's help shows them)."""

from __future__ import annotations

DEFAULT_PORT = 11112
DEFAULT_AE_TITLE = "DICOMCOMMIT"
DEFAULT_MAX_ASSOCIATIONS = 16
DEFAULT_COMMIT_INTERVAL = 5.0
DEFAULT_COMMIT_FILES = 1000
