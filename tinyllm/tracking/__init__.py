"""Tracking: the MLflow store, tracked runs, the model registry and which model to load."""
