"""``importhooks-image-service [--config FILE]``: serve the API with uvicorn on the configured host and port."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from importhooks import ConfigError
from importhooks.errors import PluginLoadError

from .app import create_app
from .config import load_config
from .service import ImageService


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="importhooks-image-service",
                                     description="Reference image service (Glance v2 subset) for importhooks.")
    parser.add_argument("--config", metavar="FILE",
                        help="TOML configuration; the default one, shipped with the package, serves 127.0.0.1:9292")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        service = ImageService(config)
    except (ConfigError, PluginLoadError) as exc:
        print(f"importhooks-image-service: configuration error: {exc}", file=sys.stderr)
        return 2
    app = create_app(config, service=service)
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level,
                timeout_graceful_shutdown=5, log_config=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
