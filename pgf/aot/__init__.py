"""Ahead-of-time compilation for accelerators this machine does not have.

    python -m pgf.aot --config=configs/vit_1_16.py --topology=v4-8 [--compare=dense]

compiles the trainer's exact train and eval steps for a Cloud TPU slice with libtpu's
compile-only client (no TPU needed) and reports per-device memory against the chip's HBM,
whether it fits (exit status), the compiler's flops and bytes, roofline estimates and the
collectives. See docs/aot.md.
"""

from pgf.aot.topology import CHIPS, INSTALL_HINT, Topology, libtpu_available, resolve

__all__ = ["CHIPS", "INSTALL_HINT", "Topology", "libtpu_available", "resolve"]
