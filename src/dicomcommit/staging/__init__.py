"""Staging: writing datasets into a staging directory (Stager, its journal) and the one-shot dcmwrite."""
