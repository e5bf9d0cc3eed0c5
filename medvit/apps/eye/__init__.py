"""``medvit eye``: fundus and OCT classification on the shared classification core (see ``api.py``)."""
