"""Thin Ray job entrypoints, one per stage: `python -m ray_jobs.<stage>` or `dig <stage>`."""
