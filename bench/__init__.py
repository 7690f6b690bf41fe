"""Benchmarks (issue 7): `python -m bench.run --help`. See BENCHMARKS.md."""
