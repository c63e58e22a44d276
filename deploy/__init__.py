"""Deployment files; `deploy.ray` is the Ray Serve scale-out (importable by Ray workers)."""
