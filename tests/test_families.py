"""The family registry: every family gives the whole interface, lookups fail by name, and a new
family is added by a new module plus one registration line (here a toy MLP, written to a temp
folder and registered by one `FAMILIES[...] = ...`), after which the trainer, validation,
sharding, FLOPs, deploy reports and the step benchmark all serve it unchanged."""

import os
import sys
import textwrap

import jax
import numpy as np
import pytest

from pgf import families

TOY_FAMILY = textwrap.dedent('''
    """A toy family: an MLP on digits. Nothing else in pgf knows about it."""
    import flax.linen as nn
    import ml_collections

    from pgf.families import image
    from pgf.train import config_lib

    NAME = "toy_mlp"
    FF = r"hidden_\\d+/kernel"
    SHARDING_RULES = ((r"hidden_\\d+/kernel$", "fsdp,model"), (r".*", "fsdp"))


    class MLP(nn.Module):
      num_classes: int
      width: int
      depth: int

      @nn.compact
      def __call__(self, x, train=False):
        x = x.reshape(x.shape[0], -1)
        for i in range(self.depth):
          x = nn.relu(nn.Dense(self.width, name=f"hidden_{i}")(x))
        return nn.Dense(self.num_classes, name="head")(x)


    def rules(ff, qk=None, qkv=None):
      return ((FF, ff),) if ff else ()


    def toy_config(ff="1:4", arg=None):
      arg = config_lib.parse_arg(arg, steps=2, method="mdgf_exp")
      config = ml_collections.ConfigDict()
      config.seed = 0
      config.model = ml_collections.ConfigDict(dict(name=NAME, width=16, depth=2))
      config.sparsity = config_lib.sparsity_config(arg.method, rules(ff), sdgf_k=2)
      config.optim = ml_collections.ConfigDict(dict(
          lr=1e-3, reference_batch=16, schedule="cosine", warmup_steps=1, warmup_epochs=0.0,
          b1=0.9, b2=0.999, weight_decay=0.0, grad_clip=1.0, min_lr=0.0))
      config.data = ml_collections.ConfigDict(dict(name="digits", image_size=8, data_dir="",
                                                   randaugment="", workers=0))
      config.loss = "softmax_xent"
      config.label_smoothing = 0.0
      config.update(batch_size=16, eval_batch_size=600, total_steps=arg.steps, total_epochs=0.0,
                    log_every=1, eval_every=0, checkpoint_every=2, keep_checkpoints=1,
                    async_checkpointing=False, init_from="", noise_every=0)
      config_lib.add_sharding(config, rules=SHARDING_RULES)
      return config


    def problems(config):
      out = []
      if not isinstance(config.model.get("width"), int) or config.model.width < 4:
        out.append(f"config.model.width={config.model.get('width')!r}: an int >= 4")
      return out + image.image_problems(config)


    def toy_model(config, num_classes):
      return MLP(num_classes, config.model.width, config.model.depth)


    model = toy_model


    def build_task(config, process_index=0, process_count=1):
      from pgf.train import tasks
      return tasks.classification_task(config, process_index, process_count, model_fn=toy_model)


    def abstract_model(config):
      return image.abstract_model(config, toy_model)


    def matmuls(config, **unused):
      from pgf.analysis.flops import Matmul
      size, width = config.data.image_size, config.model.width
      k = size * size * 3
      out = []
      for i in range(config.model.depth):
        out.append(Matmul(f"hidden_{i}/kernel", "mlp", 1, k, width))
        k = width
      return tuple(out + [Matmul("head/kernel", "head", 1, k, 10)])


    def flops_header(config, matmul_list, **unused):
      return f"Toy MLP, width {config.model.width}", [("image", 1.0)]


    def bench_inputs(config, batch, image_size=0, variant=""):
      size = image_size or config.data.image_size
      init_fn, loss_fn, data = image.synthetic_classifier(toy_model(config, 10), size, batch, 10)
      return init_fn, loss_fn, data, f"width {config.model.width}, batch {batch}"
''')


@pytest.fixture
def toy(tmp_path, monkeypatch):
  (tmp_path / "toy_family.py").write_text(TOY_FAMILY)
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setitem(families.FAMILIES, "toy_mlp", "toy_family")  # the one registration line
  yield families.get("toy_mlp")
  sys.modules.pop("toy_family", None)


@pytest.mark.parametrize("name", families.names())
def test_every_family_gives_the_whole_interface(name):
  family = families.get(name)
  assert all(hasattr(family, field) for field in families.INTERFACE)
  assert family.rules("1:8")  # an FF rule at 1:8
  assert family.SHARDING_RULES[-1] == (r".*", "fsdp")


def test_unknown_and_incomplete_families_fail_by_name(tmp_path, monkeypatch):
  import ml_collections  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r"config.model.name='gpt2': not a registered model "
                                       r"family; one of \[.*'vit'.*pgf/families/__init__.py"):
    families.of_config(ml_collections.ConfigDict({"model": {"name": "gpt2"}}))
  (tmp_path / "half_family.py").write_text("NAME = 'half'\ndef rules(ff):\n  return ()\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setitem(families.FAMILIES, "half", "half_family")
  with pytest.raises(TypeError, match=r"'half' \(half_family\) does not define \['SHARDING_RULES', "
                                      r"'problems', 'build_task'"):
    families.get("half")


def test_unknown_family_is_a_config_problem():
  from pgf.families import vit  # pylint: disable=g-import-not-at-top
  from pgf.train import config_lib  # pylint: disable=g-import-not-at-top
  config = vit.vit_config(arg="demo")
  config.model.name = "gpt2"
  with pytest.raises(ValueError, match="config.model.name='gpt2': not a registered model family"):
    config_lib.validate(config)


def test_a_new_family_is_one_module_and_one_registration_line(toy, tmp_path):
  from pgf.analysis import flops  # pylint: disable=g-import-not-at-top
  from pgf.deploy import model as deploy_model  # pylint: disable=g-import-not-at-top
  from pgf.train import config_lib, sharding, train_and_evaluate  # pylint: disable=g-import-not-at-top
  config = toy.toy_config()
  config_lib.validate(config)
  bad = toy.toy_config()
  bad.model.width = 2
  assert "config.model.width=2: an int >= 4" in config_lib.validate(bad, raise_errors=False)
  # Sharding: a config without sharding_rules gets the family's.
  del config.sharding_rules
  assert sharding.rules_of(config) == toy.SHARDING_RULES
  config = toy.toy_config()
  # Deploy reports and FLOPs.
  _, params, _ = deploy_model.abstract_model(config)
  assert params["hidden_0"]["kernel"].shape == (192, 16)
  report = flops.describe(config)
  assert report.startswith("Toy MLP, width 16")
  # The train loop: two steps, a checkpoint, the sparsity the recipe asks for at the end.
  summary = train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["final_step"] == 2 and 0 <= summary["deployed_accuracy"] <= 1
  kernel = np.asarray(jax.device_get(summary["state"]["params"]["hidden_1"]["kernel"]))
  assert kernel.shape == (16, 16)
  # The step benchmark's inputs.
  init_fn, loss_fn, batch, described = toy.bench_inputs(config, 4)
  loss, _ = loss_fn(init_fn(jax.random.key(0)), batch, jax.random.key(1), True)
  assert np.isfinite(float(loss)) and described == "width 16, batch 4"
