"""featbench classify stage."""
