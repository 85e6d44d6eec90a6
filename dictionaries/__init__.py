"""Versioned data tables (routes, CBOR keys/values, preset Flate dictionaries); see README.md here."""
