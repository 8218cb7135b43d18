"""What the test suite and the benchmarks share and the product does not ship: this machine's peers."""
