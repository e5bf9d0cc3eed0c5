"""``medvit cxr``: multi-label chest X-ray classification on the shared classification core (see ``api.py``)."""
