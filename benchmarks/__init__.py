"""leakmap benchmarks: ``python -m benchmarks`` (headline figures) and ``benchmarks/run.py`` (breakdown)."""
