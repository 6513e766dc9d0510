"""Run storage: where a run's stage outputs, manifest and config live (local folder or S3)."""
