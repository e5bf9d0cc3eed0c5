"""Training engine (fit loop, optimizer, checkpoints, distributed) and the batch-job runner."""
