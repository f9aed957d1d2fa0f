"""The e2e app's package lives in e2e/app/ (its own Flower project): make it importable as `e2e_app`."""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[3] / "e2e" / "app"
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))
