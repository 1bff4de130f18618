r"""ViT-B/16 on ImageNet-1k, 1:8 FF + 1:8 QK (paper Table 2 row "1:8 FF + 1:8 QK"), MDGF-Exp by default.

Sparsifies the FF layers (mlp/fc1, mlp/fc2) at 1:8 and Q and K at 1:8;
attention output, patch embedding and head stay dense.
Paper top-1 (ImageNet-1k, 350 epochs; dense 76.389): SR-STE 75.527, MDGF-Lin 76.473,
MDGF-Exp 77.349, SDGF-Step 76.617, SDGF-Geo 76.334.

Memory: as shipped it fits every slice from a v4-8 or v5e-8 up (micro-batches of at most 128
images per chip, `config.device_micro_batch`; the 1:16 config compiled for a v5e-8 holds 9.6
of 15.2 usable GiB per chip: docs/aot.md). Check a slice without a TPU:

  python -m pgf.aot --config=configs/vit_1_8_qk_1_8.py --topology=v4-32
  python -m pgf.main --config=configs/vit_1_8_qk_1_8.py --workdir=$WORKDIR \
      --config.data.data_dir=/gcs/BUCKET/tensorflow_datasets
  python -m pgf.main --config=configs/vit_1_8_qk_1_8.py:method=sdgf_geometric --workdir=$WORKDIR
  python -m pgf.main --config=configs/vit_1_8_qk_1_8.py:demo --workdir=/tmp/vit_1_8_qk_1_8_demo   # CPU, digits
"""

from pgf.families import vit


def get_config(arg=None):
  return vit.vit_config(ff="1:8", qk="1:8", arg=arg)
