"""What export (``archive.py``) and import (``archive_import.py``) agree on: names, version, limits."""

from __future__ import annotations

import re

INDEX = "warmgraph-archive.json"
ARCHIVE_FORMAT = 1
KEY_RE = re.compile(r"^[0-9a-f]{64}$")
SMALL_LIMIT = 16 * 2**20  # a manifest or the index larger than this is not one we wrote
BLOCK = 1 << 20  # read and hash in blocks of this size
