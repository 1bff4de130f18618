r"""ViT-B/16 on ImageNet-1k, FF layers at 1:16, MDGF-Exponential (paper Table 2).

Paper top-1 (ImageNet-1k, 350 epochs): SR-STE 75.637, MDGF-Lin 76.594, MDGF-Exp 77.325,
SDGF-Step 75.923, SDGF-Geo 76.869 (dense 76.389).

  python -m pgf.main --config=configs/vit_1_16.py --workdir=$WORKDIR \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets
  python -m pgf.main --config=configs/vit_1_16.py:demo --workdir=/tmp/vit_demo   # CPU, digits
  python -m pgf.main --config=configs/vit_1_16.py:method=sr_ste,variant=S/16 --workdir=...
"""

from pgf import config_lib


def get_config(arg=None):
  return config_lib.vit_config(ff="1:16", arg=arg)
