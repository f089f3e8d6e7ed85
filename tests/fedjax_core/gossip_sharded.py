"""The `ppermute` gossip kernels on an 8-device 'clients' mesh.

Run by `test_gossip.py` in a subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`: a ring of 32 nodes
and an 8x4 torus, node states sharded along the node axis, mixed with
per-slot random weights (and one dead link), must equal the dense
reference, one and three steps; the compiled ring and torus must exchange
rows with collective-permutes and never all-gather the population. A
torus whose rows do not divide over the devices falls back to `jnp.roll`
and still agrees. Prints 'gossip sharded: ok' on success.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fedjax_core.channel import gossip
from fedjax_core.channel import gossip_shifts
from fedjax_core.channel import mixing_weights
from fedjax_core.channel import topology
from fedjax_core.channel.mixing_weights import Mixing

_TOL = dict(rtol=1e-5, atol=1e-6)


def _mixing(rng, expected):
  """Random per-slot weights on the slot order `expected`, one dead link;
  returns the mixing and its dense W (numpy)."""
  n, k = expected.shape
  neighbours = expected.copy()
  weights = rng.uniform(0.05, 0.3, size=(n, k)).astype(np.float32)
  neighbours[3, 1] = 3  # A dead link.
  weights[3, 1] = 0.0
  self_weight = rng.uniform(0.1, 1.0, size=n).astype(np.float32)
  w = np.diag(self_weight.astype(np.float64))
  np.add.at(w, (np.repeat(np.arange(n), k), neighbours.ravel()),
            weights.ravel())
  return Mixing(jnp.asarray(neighbours, jnp.int32), jnp.asarray(weights),
                jnp.asarray(self_weight)), w


def _check(name, mesh, mixing, w, tree, **kwargs):
  """Sharded kernel == numpy `W x` and `W^3 x`; returns the compiled HLO
  of the sharded program."""
  sharding = NamedSharding(mesh, PartitionSpec('clients'))
  tree, mixing = jax.device_put((tree, mixing), sharding)

  def run(tree, mixing):
    return (gossip.mix(tree, mixing, steps=1, mesh=mesh, **kwargs),
            gossip.mix(tree, mixing, steps=3, mesh=mesh, **kwargs))

  compiled = jax.jit(run).lower(tree, mixing).compile()
  for steps, got in zip((1, 3), compiled(tree, mixing)):
    power = np.linalg.matrix_power(w, steps)
    for g, x in zip(jax.tree.leaves(got), jax.tree.leaves(tree)):
      assert g.sharding.is_equivalent_to(sharding, g.ndim), (name, g.sharding)
      np.testing.assert_allclose(
          np.asarray(g), np.tensordot(power, np.asarray(x, np.float64), 1),
          **_TOL, err_msg=f'{name} steps={steps}')
  return compiled.as_text()


def _mixing_matrix(mixing):
  return np.asarray(mixing_weights.mixing_matrix(mixing), np.float64)


def main() -> int:
  assert len(jax.devices()) == 8, jax.devices()
  mesh = Mesh(np.array(jax.devices()), ('clients',))
  rng = np.random.default_rng(0)

  n = 32
  tree = {'w': jnp.asarray(rng.normal(size=(n, 3, 2)), jnp.float32),
          'b': jnp.asarray(rng.normal(size=(n,)), jnp.float32)}
  ring, w = _mixing(rng, topology.ring_slots(n))
  hlo = _check('ring', mesh, ring, w, tree, method='ring')
  assert 'collective-permute' in hlo, 'ring: no collective-permute'
  assert 'all-gather' not in hlo, 'ring: all-gather in the compiled HLO'

  rows, cols = 8, 4
  torus, w = _mixing(rng, topology.torus_slots(rows, cols))
  hlo = _check('torus', mesh, torus, w, tree, method='torus',
               grid=(rows, cols))
  assert 'collective-permute' in hlo, 'torus: no collective-permute'
  assert 'all-gather' not in hlo, 'torus: all-gather in the compiled HLO'

  # 4 grid rows over 8 devices: the roll fallback, same numbers.
  wide, w = _mixing(rng, topology.torus_slots(4, 8))
  _check('torus fallback', mesh, wide, w, tree, method='torus', grid=(4, 8))

  # Eagerly (outside jit), the ring on the mesh checks its slots and runs.
  got = gossip_shifts.mix_ring(jax.device_put(tree['b'], NamedSharding(
      mesh, PartitionSpec('clients'))), ring, mesh=mesh)
  np.testing.assert_allclose(
      np.asarray(got), np.tensordot(_mixing_matrix(ring), tree['b'], 1),
      **_TOL)
  print('gossip sharded: ok')
  return 0


if __name__ == '__main__':
  sys.exit(main())
