"""config.model.remat: same params, same loss and gradients, for ViT, SwinV2 and T5 blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pgf.models import remat, swin, t5, vit


def _grads(model, args, train_kw):
  params = model.init({"params": jax.random.key(0)}, *args, **train_kw)["params"]
  loss = lambda p: jnp.sum(model.apply({"params": p}, *args, **train_kw) ** 2)
  return params, jax.jit(jax.value_and_grad(loss))(params)


def test_remat_keeps_params_and_gradients():
  images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  tokens = jax.random.randint(jax.random.key(2), (2, 8), 1, 50)
  cases = [
      (lambda r: vit.ViT(num_classes=5, width=32, depth=2, mlp_dim=64, num_heads=2,
                         patch_size=8, head_zero_init=False, remat=r), (images,),
       dict(train=True), "dots"),
      (lambda r: t5.T5(t5.get_config("tiny", 64, remat=r)), (tokens, tokens),
       dict(train=True), "block"),
  ]
  for make, args, kw, policy in cases:
    p0, (l0, g0) = _grads(make("none"), args, kw)
    p1, (l1, g1) = _grads(make(policy), args, kw)
    assert jax.tree.structure(p0) == jax.tree.structure(p1)  # names unchanged
    np.testing.assert_allclose(l0, l1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)
  # SwinV2 wraps its blocks the same way: the params keep their names.
  make = lambda r: swin.SwinV2(num_classes=5, embed_dim=16, depths=(2,), num_heads=(2,),
                               window_size=2, patch_size=4, remat=r)
  shapes = [jax.eval_shape(lambda: make(r).init(jax.random.key(0), images, train=True))
            for r in ("none", "block")]
  assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1])
  with pytest.raises(ValueError, match="config.model.remat='all'"):
    remat.check("all")
