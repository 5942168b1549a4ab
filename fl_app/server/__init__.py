"""Server-side pieces of the ServerApp: traffic counting, version evaluation, results."""
