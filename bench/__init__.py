"""Benchmarks of the token vending service (``make bench`` = ``python -m bench``). See bench/README.md."""
