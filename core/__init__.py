"""The shared service layer: settings, ORM models, sessions, storage, job logic.

No fastapi and no torch here: the API and the worker both import it.
"""
