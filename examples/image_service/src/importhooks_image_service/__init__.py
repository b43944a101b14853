"""importhooks-image-service: the reference image service for importhooks.

A Glance v2-compatible subset (version discovery, the image schema, images, staging, the
trusted upload path, interoperable image import with ``glance-direct``) that runs every
import through the importhooks pipeline, fail closed, and that the real OpenStack clients
(python-glanceclient, openstacksdk) drive. Start it with ``importhooks-image-service``.
"""

from __future__ import annotations

from .app import create_app
from .config import Principal, ServiceConfig, load_config
from .service import ImageService

__all__ = ["ImageService", "Principal", "ServiceConfig", "create_app", "load_config"]
