"""Stage 5, the training loop and what it writes and reads, without Ray: the one epoch loop (loop), run in this
process (local) or by the Ray worker; checkpoints (checkpoint), the kNN monitor, the full evaluation and the
linear probe, optimisers and schedules, and a run's checks before anything starts (preflight). Imports the
stages below it (config, ingest, views, data, methods); nothing of Ray.
"""
