r"""Dense decoder-only LM (GPT-2 small geometry) on lm1b: the model sparse fine-tuning starts from.

Same model, data and recipe as configs/lm_1_16.py with no sparsity rules. A sparse fine-tune reads
its newest checkpoint's params through `--config.init_from`.

  python -m pgf.main --config=configs/lm_pretrain.py --workdir=$PRETRAIN \
      --config.data.data_dir=$DATA --config.data.tokenizer=$DATA/lm1b_32k.model
  python -m pgf.main --config=configs/lm_1_16.py --workdir=$WORKDIR --config.init_from=$PRETRAIN \
      --config.total_steps=10000 --config.data.data_dir=$DATA --config.data.tokenizer=...
  # CPU demo on bytes of Shakespeare, then a 1:16 fine-tune of it:
  python -m pgf.main --config=configs/lm_pretrain.py:demo --workdir=/tmp/lm_pretrain_demo
  python -m pgf.main --config=configs/lm_1_16.py:demo --workdir=/tmp/lm_ft_demo \
      --config.init_from=/tmp/lm_pretrain_demo
"""

from pgf.families import gpt


def get_config(arg=None):
  return gpt.gpt_config(pretrain=True, arg=arg)
