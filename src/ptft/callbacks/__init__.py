"""Lightning callbacks: run records and image logging."""
