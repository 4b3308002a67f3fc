"""Where the tests find the offline MNIST and Fashion-MNIST copies: $SARNET_DATA_DIR (what CI and the
README set), else ../shared/data beside the repository. A test that needs them skips, saying where it
looked, only when neither holds them; none falls back to other data."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SARNET_DATA_DIR") or ROOT.parent / "shared" / "data")
HAS_DATA = (DATA_DIR / "mnist").is_dir()
needs_data = pytest.mark.skipif(not HAS_DATA, reason=f"offline MNIST not found under {DATA_DIR} (set SARNET_DATA_DIR)")
