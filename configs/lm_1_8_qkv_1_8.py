r"""Decoder-only LM (GPT-2 small geometry) on lm1b: FF at 1:8 and Q, K, V of every layer at 1:8.

As configs/lm_1_8.py, plus the query, key and value kernels of all 12 attention layers at 1:8
(grouped along their input axis); the attention output projection, embedding and norms dense.

  python -m pgf.main --config=configs/lm_1_8_qkv_1_8.py --workdir=$WORKDIR \
      --config.data.data_dir=$DATA --config.data.tokenizer=$DATA/lm1b_32k.model
  # CPU demo on bytes of Shakespeare (a few minutes):
  python -m pgf.main --config=configs/lm_1_8_qkv_1_8.py:demo --workdir=/tmp/lm_qkv_demo
  python -m pgf.generate --workdir=/tmp/lm_qkv_demo --prompt="ROMEO:" --compressed
"""

from pgf.families import gpt


def get_config(arg=None):
  return gpt.gpt_config(ff="1:8", qkv="1:8", arg=arg)
