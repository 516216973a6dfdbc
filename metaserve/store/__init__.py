"""The run directory: config.yaml, checkpoints/<step>/state.pt, metrics.parquet."""
