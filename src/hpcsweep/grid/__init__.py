"""A study as a grid: grid files, launching points as MLflow runs on an executor, status and cancel."""
