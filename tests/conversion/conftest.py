"""Conversion tests import the scripts in `conversion_scripts/` as modules."""

import sys
from pathlib import Path


SCRIPTS = Path(__file__).resolve().parents[2] / "conversion_scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
