"""The benchmarks: ``python -m bench`` runs them all and writes the report (see bench/runner.py);
each one also runs alone as ``python -m bench.<module>`` from the project root."""
