"""Developer tools of arl2rt; a package so that, run as ``PYTHONPATH=src python -m tools.<name>`` from the repository
root, they import the helpers they share with the benchmarks from ``benchmarks._harness``."""
