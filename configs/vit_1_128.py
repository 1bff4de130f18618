r"""ViT-B/16 on ImageNet-1k, 1:128 FF (paper Table 2 row "1:128 FF"), MDGF-Exp by default.

Sparsifies the FF layers (mlp/fc1, mlp/fc2) at 1:128;
attention output, patch embedding and head stay dense.
Paper top-1 (ImageNet-1k, 350 epochs; dense 76.389): SR-STE 72.069, MDGF-Lin 74.012,
MDGF-Exp 74.18, SDGF-Step 71.725, SDGF-Geo 69.801.

  python -m pgf.main --config=configs/vit_1_128.py --workdir=$WORKDIR \
      --config.data.data_dir=/gcs/BUCKET/tensorflow_datasets
  python -m pgf.main --config=configs/vit_1_128.py:method=sdgf_geometric --workdir=$WORKDIR
  python -m pgf.main --config=configs/vit_1_128.py:demo --workdir=/tmp/vit_1_128_demo   # CPU, digits
"""

from pgf.families import vit


def get_config(arg=None):
  return vit.vit_config(ff="1:128", arg=arg)
