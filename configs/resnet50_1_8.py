r"""ResNet-50 on CIFAR-10, 1:8 conv kernels (paper Table 6 row "1:8"), MDGF-Exp by default.

Sparsifies every bottleneck conv (1x1, 3x3, 1x1) and projection shortcut at 1:8, grouped along
the input channels (`:group=hwi` groups the flattened H*W*I receptive field instead); the stem
conv and the classifier stay dense. BatchNorm statistics are synchronised over the global batch.
Paper top-1 (CIFAR-10; dense 85.09): SR-STE 80.78, MDGF-Exp 82.48.

Memory: as shipped it fits every slice from a v4-8 or v5e-8 up (2:8 compiled for a v5e-8: 1.1
of 15.2 usable GiB per chip: docs/aot.md). Check a slice without a TPU:

  python -m pgf.aot --config=configs/resnet50_1_8.py --topology=v4-32
  python -m pgf.main --config=configs/resnet50_1_8.py --workdir=$WORKDIR \
      --config.data.data_dir=/gcs/BUCKET/tensorflow_datasets
  python -m pgf.main --config=configs/resnet50_1_8.py:method=sr_ste --workdir=$WORKDIR
  python -m pgf.main --config=configs/resnet50_1_8.py:demo --workdir=/tmp/resnet50_1_8_demo  # CPU
"""

from pgf.families import resnet


def get_config(arg=None):
  return resnet.resnet_config(nm="1:8", arg=arg)
