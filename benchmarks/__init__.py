"""Benchmarks of arl2rt; a package so that, run as ``PYTHONPATH=src python -m benchmarks.<name>`` from the repository
root, they import their shared helpers from ``benchmarks._harness``."""
