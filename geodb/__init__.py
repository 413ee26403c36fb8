"""Geolocation for leakmap: embedded databases, their build script, lookups.

See ``leakmap.geodb.lookup`` for the API and docs/geodb.md for the data.
"""
