"""Ray Serve scale-out: `python -m deploy.ray.serve_app` (see serve_app.py)."""
