"""Lightning callbacks: run records, final checkpoints, throughput, embeddings and test
predictions."""
