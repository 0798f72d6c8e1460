"""The version: read by setuptools for the package metadata, and by ``dicomcommit --version``."""

__version__ = "0.1.0"
