"""Publishing: turn a built and tested image into a marketplace bundle in build/publish/<image>/.

    python -m appliance_build.publish publish IMAGE --url-prefix URL
    python -m appliance_build.publish check FILE...
    python -m appliance_build.publish record-tested IMAGE

See docs/publishing.md.
"""

from __future__ import annotations

from .bundle import publish
from .errors import PublishError, Refused
from .marketplace import check_file
from .tested import read_junit, record_tested_image

__all__ = ["PublishError", "Refused", "check_file", "publish", "read_junit", "record_tested_image"]
