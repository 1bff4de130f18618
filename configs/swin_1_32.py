r"""SwinV2-B (window 16, 256 px) on ImageNet-1k, 1:32 FF (paper Table 3 row "1:32 FF"), MDGF-Exp by default.

Sparsifies the FF layers (mlp/fc1, mlp/fc2) at 1:32;
attention output, position-bias MLP, patch embedding, patch merging and head stay dense.
Paper top-1 (ImageNet-1k, 350 epochs; dense 83.45): SR-STE 78.972,
MDGF-Exp 79.545, SDGF-Step 76.480, SDGF-Geo 79.277.

  python -m pgf.main --config=configs/swin_1_32.py --workdir=$WORKDIR \
      --config.data.data_dir=/gcs/BUCKET/tensorflow_datasets
  python -m pgf.main --config=configs/swin_1_32.py:method=sdgf_geometric --workdir=$WORKDIR
  python -m pgf.main --config=configs/swin_1_32.py:demo --workdir=/tmp/swin_1_32_demo   # CPU, digits

Defaults and where each comes from: pgf/families/swin.py.
"""

from pgf.families import swin


def get_config(arg=None):
  return swin.swin_config(ff="1:32", arg=arg)
