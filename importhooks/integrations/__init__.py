"""Adapters that run the importhooks pipeline inside other image services.

Nothing here is imported by :mod:`importhooks` itself: :mod:`importhooks.integrations.glance`
imports OpenStack Glance's libraries (taskflow, oslo.config) and is loaded only by Glance,
through the entry point ``importhooks`` in the group ``glance.image_import.plugins``.
"""
