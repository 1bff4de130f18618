"""Test setup: one CPU device for the main suite (the 8-device tests run in a subprocess)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
