"""Deployment and offline-comparison tests (compose, Dockerfile, dashboard, report, Prometheus)."""
