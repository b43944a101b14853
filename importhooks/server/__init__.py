"""The server kit: what an image service embeds around the pipeline.

:mod:`~importhooks.server.status` (the image status machine), :mod:`~importhooks.server.staging`
(limited staging), :mod:`~importhooks.server.validation` (import requests),
:mod:`~importhooks.server.discovery` (``/v2/info/import`` and the import schema) and
:mod:`~importhooks.server.runner` (the background import runner). The pipeline core never
imports this package.
"""
