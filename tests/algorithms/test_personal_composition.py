"""Personalization composes with the channel where the shared part is what
travels: FedPer through secure aggregation ends where plain FedPer does,
its clients' heads never leave them, and the upload is the body alone."""

import dataclasses

import jax
import numpy as np
import optax

from algorithms.fedper import fedper
from fedjax_core import Simulation
from fedjax_core.channel.aggregation import SecureAggregation
from fedjax_core.toolkit.local_sgd import LocalSGD
import two_layer_problem as two

# The body, Dense_0: a 3 x 2 kernel and 2 biases.
_BODY_WORDS = 8


def _fedper_run(**settings):
  algorithm = fedper(two.model().apply, LocalSGD(0.3), optax.sgd(1.0),
                     personal_layers=two.HEAD_PATTERN)
  config = dataclasses.replace(two.config(2), **settings)
  sim = Simulation(algorithm, two.model(), two.dataset(), config)
  records = [sim.run_round() for _ in range(2)]
  return sim, records


def test_fedper_through_secure_aggregation():
  plain, plain_records = _fedper_run()
  secure, secure_records = _fedper_run(
      secure_aggregation=SecureAggregation(bits=32, clip=4.0))
  body = lambda sim: jax.device_get(sim.server_state.model.params)
  jax.tree.map(lambda s, p: np.testing.assert_allclose(s, p, atol=1e-5),
               body(secure), body(plain))
  assert not all(jax.tree.leaves(jax.tree.map(
      np.array_equal, body(secure), body(plain))))  # It went masked.
  heads = lambda sim: jax.device_get(sim.store.stacked)
  jax.tree.map(lambda s, p: np.testing.assert_allclose(s, p, atol=1e-5),
               heads(secure), heads(plain))
  assert plain_records[0]['bytes_up'] == 4 * _BODY_WORDS
  assert secure_records[0]['bytes_up'] == (_BODY_WORDS + 1) * 32 / 8
