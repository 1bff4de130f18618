r"""WMT En->De encoder-decoder trained from scratch, paper Table 5 row "1:64"; MDGF-Exp by default.

The FF layers (mlp/wi_0, wi_1, wo of all 6 encoder and 6 decoder layers) at 1:64; attention,
embeddings and logits dense. Model: 6+6 layers, width 1024, 16 heads, gated MLP 2816, shared 32k
SentencePiece vocabulary (212M parameters; why this size: pgf/families/wmt.py). Data: TFDS
wmt17_translate/de-en train, eval on newstest2014 (wmt14_translate/de-en test).
Recipe: batch 512, 200k steps, Adam(0.9, 0.92), lr 0.0625 with rsqrt decay after 1k warm-up steps
(peak 1.98e-3), 5% dense steps first, last 10% with the final hard N:M mask.
Paper token accuracy (dense 0.747): SR-STE 0.707, SDGF-Stepwise 0.710, MDGF-Exp 0.711.

Memory: as shipped it fits every slice from a v4-8 or v5e-8 up (micro-batches of at most 32
sentence pairs per chip, `config.device_micro_batch`: on a v5e-8 the 1:16 step needs 11.36 of
15.20 usable GiB per chip in two micro-batches, 15.61 in one: docs/aot.md). Check a slice:

  python -m pgf.aot --config=configs/wmt_1_64.py --topology=v4-32
  python -m pgf.data.wmt --vocab=$DATA/wmt_de_en_32k.model --data_dir=$DATA  # once
  python -m pgf.main --config=configs/wmt_1_64.py --workdir=$WORKDIR \
      --config.data.data_dir=$DATA --config.data.tokenizer=$DATA/wmt_de_en_32k.model
  python -m pgf.main --config=configs/wmt_1_64.py:method=sr_ste ...          # or sdgf_stepwise, dense
  # add --config.data.bleu_examples=3003 for sacrebleu BLEU on all of newstest2014 at each eval
  # CPU, Shakespeare next line standing in for translation (embedded data, a few minutes):
  python -m pgf.main --config=configs/wmt_1_64.py:demo --workdir=/tmp/wmt_1_64_demo
"""

from pgf.families import wmt


def get_config(arg=None):
  return wmt.wmt_config(ff="1:64", arg=arg)
