r"""SwinV2-B (window 16, 256 px) on ImageNet-1k, 1:32 FF (paper Table 3 row "1:32 FF"), MDGF-Exp by default.

Sparsifies the FF layers (mlp/fc1, mlp/fc2) at 1:32;
attention output, position-bias MLP, patch embedding, patch merging and head stay dense.
Paper top-1 (ImageNet-1k, 350 epochs; dense 83.45): SR-STE 78.972,
MDGF-Exp 79.545, SDGF-Step 76.480, SDGF-Geo 79.277.

Memory: as shipped it fits every slice from a v4-8 or v5e-8 up (micro-batches of at most 32
images per chip, `config.device_micro_batch`; the 1:16 config compiled for a v5e-8 holds 14.0
of 15.2 usable GiB per chip: docs/aot.md). Check a slice without a TPU:

  python -m pgf.aot --config=configs/swin_1_32.py --topology=v4-32
  python -m pgf.main --config=configs/swin_1_32.py --workdir=$WORKDIR \
      --config.data.data_dir=/gcs/BUCKET/tensorflow_datasets
  python -m pgf.main --config=configs/swin_1_32.py:method=sdgf_geometric --workdir=$WORKDIR
  python -m pgf.main --config=configs/swin_1_32.py:demo --workdir=/tmp/swin_1_32_demo   # CPU, digits

Defaults and where each comes from: pgf/families/swin.py.
"""

from pgf.families import swin


def get_config(arg=None):
  return swin.swin_config(ff="1:32", arg=arg)
