"""Helpers shared by test modules (not tests themselves; fixtures are in conftest.py)."""
