"""API fixtures (see tests/svc_api.py): the real app on SQLite and PostgreSQL, two tenants."""

from svc_api import service  # noqa: F401
from svc_fixtures import migrated_db  # noqa: F401
