r"""ViT-B/16 on ImageNet-1k, 1:32 FF (paper Table 2 row "1:32 FF"), MDGF-Exp by default.

Sparsifies the FF layers (mlp/fc1, mlp/fc2) at 1:32;
attention output, patch embedding and head stay dense.
Paper top-1 (ImageNet-1k, 350 epochs; dense 76.389): SR-STE 73.056, MDGF-Lin 75.807,
MDGF-Exp 76.068, SDGF-Step 74.394, SDGF-Geo 74.91.

  python -m pgf.main --config=configs/vit_1_32.py --workdir=$WORKDIR \
      --config.data.data_dir=/gcs/BUCKET/tensorflow_datasets
  python -m pgf.main --config=configs/vit_1_32.py:method=sdgf_geometric --workdir=$WORKDIR
  python -m pgf.main --config=configs/vit_1_32.py:demo --workdir=/tmp/vit_1_32_demo   # CPU, digits
"""

from pgf.families import vit


def get_config(arg=None):
  return vit.vit_config(ff="1:32", arg=arg)
