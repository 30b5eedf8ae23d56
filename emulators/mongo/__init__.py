"""Embedded MongoDB-wire-compatible server (mongoeco) for development and tests."""
