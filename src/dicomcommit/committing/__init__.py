"""committing"""
