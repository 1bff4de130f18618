r"""Decoder-only LM (GPT-2 small geometry, SwiGLU, RoPE) on lm1b with every FF kernel at 1:4.

The FF kernels (mlp/gate, up, down of all 12 layers) at 1:4, grouped along their input axis;
attention, embedding (tied to the logits) and norms dense. MDGF-Exp by default (`:method=sr_ste`,
`dense`, `mdgf_linear`, `sdgf_stepwise`, `sdgf_geometric`, ...). 110M parameters with the 32k
vocabulary (124M with GPT-2's 50,304 ids, `--config.model.vocab_size=50304`); rows of 256
SentencePiece tokens packed from lm1b sentences, batch 256, 100k steps, AdamW 6e-4 cosine, 5% dense
steps first and the last 10% on the final hard mask. Eval: bits per byte of lm1b's test split.

  python -m pgf.data.lm --vocab=$DATA/lm1b_32k.model --name=lm1b --data_dir=$DATA   # once
  python -m pgf.main --config=configs/lm_1_4.py --workdir=$WORKDIR \
      --config.data.data_dir=$DATA --config.data.tokenizer=$DATA/lm1b_32k.model
  # sparse fine-tuning of a dense pre-trained LM (configs/lm_pretrain.py):
  python -m pgf.main --config=configs/lm_1_4.py --workdir=$WORKDIR --config.init_from=$PRETRAIN ...
  # CPU demo, bytes of Shakespeare (a few minutes), then text from the compressed model:
  python -m pgf.main --config=configs/lm_1_4.py:demo --workdir=/tmp/lm_1_4_demo
  python -m pgf.deploy --workdir=/tmp/lm_1_4_demo --out=/tmp/lm_1_4_demo/model.safetensors
  python -m pgf.generate --workdir=/tmp/lm_1_4_demo --prompt="ROMEO:" --compressed
"""

from pgf.families import gpt


def get_config(arg=None):
  return gpt.gpt_config(ff="1:4", arg=arg)
