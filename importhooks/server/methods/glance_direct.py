"""``glance-direct``: the user staged the data with ``PUT /v2/images/{id}/stage``; the import reads it."""

from __future__ import annotations

from . import ImportMethod, register

METHOD = register(ImportMethod(
    "glance-direct", uses_staging=True,
    description="Import the data staged with PUT /v2/images/{id}/stage.",
))
