"""What the test suite and the benchmarks share and the product does not ship: the peers."""
