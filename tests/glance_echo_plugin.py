"""Site plugin of the Glance tests: echoes the requester and claims a run was given, as protected properties.

Enabled by the test glance-api's importhooks settings (``[plugins] enabled``), so a test
reads on the image what the plugin handed the pipeline: the request context's user,
project and roles, the image's name and a custom property.
"""

from __future__ import annotations

from importhooks import ImportContext, hookimpl


@hookimpl
def importhooks_set_protected_properties(context: ImportContext) -> dict[str, str]:
    requester, claims = context.requester, context.claims
    return {
        "importhooks_test_requester": f"{requester.user}/{requester.project}/{','.join(sorted(requester.roles))}",
        "importhooks_test_claims": f"{claims.properties.get('name')}/{claims.properties.get('custom')}",
    }
