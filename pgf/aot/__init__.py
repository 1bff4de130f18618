"""Ahead-of-time compilation for accelerators this machine does not have.

    python -m pgf.aot --config=configs/vit_1_16.py --topology=v4-8 [--compare=dense]
    python -m pgf.aot --config=configs/vit_1_16.py --topology=h100-8

compiles the trainer's exact train and eval steps for a Cloud TPU slice with libtpu's
compile-only client (no TPU needed), or for a GPU box with the CUDA plugin's compile-only
devices (no GPU needed), and reports per-device memory against the chip's memory, whether it
fits (exit status), the compiler's flops and bytes (TPU), roofline estimates and the
collectives. See docs/aot.md.
"""

from pgf.aot.topology import (CHIPS, GPU_INSTALL_HINT, INSTALL_HINT, Topology,
                              cuda_plugin_available, libtpu_available, resolve, usable_bytes)

__all__ = ["CHIPS", "GPU_INSTALL_HINT", "INSTALL_HINT", "Topology", "cuda_plugin_available",
           "libtpu_available", "resolve", "usable_bytes"]
