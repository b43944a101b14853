"""A paste filter for the test glance-api: a fixed request context instead of Keystone.

Glance's own no-auth filter leaves ``project_id`` empty, and an import then fails
(a task needs an owner). This one gives every request a user, a project and the
admin role; ``X-User-Id``, ``X-Project-Id`` and ``X-Roles`` (comma separated)
override them per request. Loaded by uWSGI inside the Glance environment only.
"""

from __future__ import annotations

import glance.context
from glance.api.middleware.context import BaseContextMiddleware

USER = "test-user"
PROJECT = "test-project"
ROLES = ("admin", "member", "reader")


class FixedContextMiddleware(BaseContextMiddleware):
    def process_request(self, req):
        roles = req.headers.get("X-Roles")
        role_list = [r.strip() for r in roles.split(",") if r.strip()] if roles else list(ROLES)
        req.context = glance.context.RequestContext(
            user_id=req.headers.get("X-User-Id", USER),
            project_id=req.headers.get("X-Project-Id", PROJECT),
            roles=role_list,
            is_admin="admin" in role_list,
        )
