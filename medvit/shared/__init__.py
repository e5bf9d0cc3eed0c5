"""Shared library code of medvit: backbone, data, engine, metrics, config."""
