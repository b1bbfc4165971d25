"""featbench's classify stage: heads and ensembles on cached features, metrics, saved models."""
