"""Readers, transforms, caches, synthetic generators and data cards."""
