r"""ViT-B/16 on ImageNet-1k, 1:128 FF (paper Table 2 row "1:128 FF"), MDGF-Exp by default.

Sparsifies the FF layers (mlp/fc1, mlp/fc2) at 1:128;
attention output, patch embedding and head stay dense.
Paper top-1 (ImageNet-1k, 350 epochs; dense 76.389): SR-STE 72.069, MDGF-Lin 74.012,
MDGF-Exp 74.18, SDGF-Step 71.725, SDGF-Geo 69.801.

Memory: as shipped it fits every slice from a v4-8 or v5e-8 up (micro-batches of at most 128
images per chip, `config.device_micro_batch`; the 1:16 config compiled for a v5e-8 holds 9.6
of 15.2 usable GiB per chip: docs/aot.md). Check a slice without a TPU:

  python -m pgf.aot --config=configs/vit_1_128.py --topology=v4-32
  python -m pgf.main --config=configs/vit_1_128.py --workdir=$WORKDIR \
      --config.data.data_dir=/gcs/BUCKET/tensorflow_datasets
  python -m pgf.main --config=configs/vit_1_128.py:method=sdgf_geometric --workdir=$WORKDIR
  python -m pgf.main --config=configs/vit_1_128.py:demo --workdir=/tmp/vit_1_128_demo   # CPU, digits
"""

from pgf.families import vit


def get_config(arg=None):
  return vit.vit_config(ff="1:128", arg=arg)
