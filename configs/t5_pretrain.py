r"""T5 v1.1 base, dense span-corruption pre-training on C4: the starting point of every Table 4 row.

The paper fine-tunes a dense C4-pretrained T5X-Base (GLUE average after dense fine-tuning: 86.2).
This config produces such a checkpoint: span corruption (noise density 0.15, mean span 3) with
inputs 512 / targets 114, 2^19 steps at batch 128 (T5's pre-training budget), AdamW, cosine lr 1e-3
after 10k warm-up steps. Tokenizer: bytes by default (no vocabulary file); pass a local copy of
T5's SentencePiece model for the paper's 32k vocabulary (needs `pip install sentencepiece`).

Memory: as shipped (byte vocabulary) it fits every slice from a v4-8 or v5e-8 up (compiled for a
v5e-8: 9.6 of 15.2 usable GiB per chip: docs/aot.md). Check a slice without a TPU:

  python -m pgf.aot --config=configs/t5_pretrain.py --topology=v4-32
  python -m pgf.main --config=configs/t5_pretrain.py --workdir=$PRETRAIN \
      --config.data.data_dir=/gcs/BUCKET/tensorflow_datasets \
      --config.data.tokenizer=/path/to/cc_all.32000/sentencepiece.model
  # CPU, embedded Shakespeare, ByT5 spans (mean 20 bytes), 1200 steps: 558 s on a shared 2-core CPU;
  # held-out 2.77 bits per target byte vs 4.53 for the unigram byte entropy of the same targets:
  python -m pgf.main --config=configs/t5_pretrain.py:demo --workdir=/tmp/t5_pretrain_demo

Then fine-tune sparsely from it with any Table 4 row, e.g.
  python -m pgf.main --config=configs/t5_1_8_qkv_1_8.py:demo --workdir=/tmp/t5_1_8_qkv_1_8_demo \
      --config.init_from=/tmp/t5_pretrain_demo
"""

from pgf.families import t5


def get_config(arg=None):
  return t5.t5_config(arg=arg, pretrain=True)
