"""The command line: ``dicomcommit`` (``main``), its tables and the demo."""
