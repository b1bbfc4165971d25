"""featbench benchmarks stage."""
