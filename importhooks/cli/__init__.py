"""The ``importhooks`` command: argument parsing in :mod:`~importhooks.cli.main`, text and JSON
reports in :mod:`~importhooks.cli.report`, SARIF in :mod:`~importhooks.cli.sarif`."""
