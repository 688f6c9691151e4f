"""Markers for what a test needs that may be absent: they skip with the reason."""
import importlib.util

import pytest

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed (pip install libtpu): it compiles for TPU topologies"
)
