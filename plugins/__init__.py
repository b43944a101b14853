"""importhooks' built-in plugins, installed as ``importhooks_plugins``.

Each module is an ordinary plugin: the pipeline registers it through the same call
as a site plugin (see ``importhooks.plugins.DEFAULT_PLUGINS``), so reading one is the
quickest way to learn how to write your own. One module per concern, grouped by family:
``formats`` (disk formats), ``containers`` (archives and compression), ``guest`` (what
the disk holds) and ``policy`` (what the requester may ask for).
"""
