"""Benchmarks and the offline teacher-vs-student report (python -m benchmarks.report)."""
