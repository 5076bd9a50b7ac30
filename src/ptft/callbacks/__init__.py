"""Lightning callbacks: run records, image logging, embeddings and test predictions."""
