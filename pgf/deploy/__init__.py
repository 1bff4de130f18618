"""Deploy a trained N:M model from its compressed form (see docs/deploy.md).

    params = pgf.deploy.load("model.safetensors")        # NMKernel leaves for N:M kernels
    with pgf.deploy.intercept():                           # Dense layers use nm_dot on them
      logits = model.apply({"params": params}, x, train=False)

Writing: `compress_params(params, recipe, opt_state)` -> a params tree with NMKernel leaves,
`save(path, tree)`; a training run: `python -m pgf.deploy --workdir=RUN --out=model.safetensors`.
Sizes: `python -m pgf.deploy --config=configs/vit_1_16.py --report`.
"""

from pgf.deploy.format import (FORMAT, NMKernel, densify, from_compressed, from_dense,
                               index_bits, is_compressed, load, pack_indices, read_header, save,
                               to_compressed, unpack_indices, verify)
from pgf.deploy.nm_dot import IMPLS, intercept, nm_dot, resolve_impl, use_backend, use_impl
from pgf.deploy.model import compress_params, export_checkpoint, kernel_bytes, size_report

__all__ = ["FORMAT", "NMKernel", "densify", "from_compressed", "from_dense", "index_bits",
           "is_compressed", "load", "pack_indices", "read_header", "save", "to_compressed",
           "unpack_indices", "verify", "IMPLS", "intercept", "nm_dot", "resolve_impl",
           "use_backend", "use_impl", "compress_params", "export_checkpoint", "kernel_bytes",
           "size_report"]
