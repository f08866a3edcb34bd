"""Benchmarks for Rendezvous; ``python -m bench.serving`` is the serving comparison."""
