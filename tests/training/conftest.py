"""Trainer tests: stand-ins for the modules other helpers have not landed yet (see tests/_standins.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _standins  # noqa: E402

STANDINS = _standins.install()
