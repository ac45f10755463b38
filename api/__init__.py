"""The FastAPI app: routes, schemas and dependencies. Thin: the logic lives in core/."""
