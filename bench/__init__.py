"""Benchmarks (`make bench`): bounded loads on loopback; figures go to bench/results.md."""
