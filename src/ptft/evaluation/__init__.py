"""``ptft-eval``: test a checkpoint and write its report (metrics, per-class scores, confusion
matrix)."""
