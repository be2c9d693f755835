"""What tandem counts: one definition of each figure for GetStats, Prometheus and the bench."""
