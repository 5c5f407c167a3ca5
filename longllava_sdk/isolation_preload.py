"""Imported once by the decoding workers' fork server (:data:`longllava_sdk.isolation.PRELOAD`).

It discovers the installed plugins (entry points, adapter classes and the libraries they
import) in the fork server, so every child forked from it has them already: a child then
costs a fork (~80 ms on the project's machine) instead of a plugin discovery and the
imports of pydicom, PyAV, rasterio and Pillow's format plugins (~0.6 s).
"""

from __future__ import annotations

from PIL import Image

from .plugin_manager import get_plugin_manager
from .registry import available_adapters

get_plugin_manager()
ADAPTERS = available_adapters()
Image.init()  # every Pillow format plugin (the images adapter's first decode would import them)
