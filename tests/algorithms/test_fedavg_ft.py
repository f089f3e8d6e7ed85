"""FedAvg-FT through the whole engine against a numpy re-statement: FedAvg
training with local SGD, then the global model fine-tuned by plain SGD on
each client's own batches at the current local learning rate."""

import jax
import numpy as np
import optax
import pytest

from algorithms.fedavg_ft import fedavg_ft
from fedjax_core.errors import SettingError
from fedjax_core.toolkit.local_sgd import LocalSGD
import two_layer_problem as two

LR = 0.5
LR_DECAY = 0.5
WEIGHT_DECAY = 0.1
FINETUNE_STEPS = 3
CONFIG = two.config(2, local_epochs=2)


@pytest.mark.parametrize('weighted', [True, False])
def test_matches_numpy_restatement(weighted):
  algorithm = fedavg_ft(
      two.model().apply,
      LocalSGD(LR, lr_decay=LR_DECAY, weight_decay=WEIGHT_DECAY),
      optax.sgd(1.0), weighted=weighted, finetune_steps=FINETUNE_STEPS)
  assert algorithm.personalization.train_steps == FINETUNE_STEPS
  init, sim = two.run(algorithm, CONFIG)
  want = two.np_fedavg(init, CONFIG, lr=LR, lr_decay=LR_DECAY,
                       weighted=weighted, weight_decay=WEIGHT_DECAY)
  two.assert_close(algorithm.server_params(sim.server_state), want)
  other = two.np_fedavg(init, CONFIG, lr=LR, lr_decay=LR_DECAY,
                        weighted=not weighted, weight_decay=WEIGHT_DECAY)
  assert not np.allclose(want['params']['Dense_1']['kernel'],
                         other['params']['Dense_1']['kernel'], rtol=1e-3)

  # Every client's model, vmapped as the engine evaluates it; clients keep
  # no state, so client 0 (never sampled) is fine-tuned the same way.
  clients = range(two.NUM_CLIENTS)
  trains = [two.eval_batch(i, FINETUNE_STEPS) for i in clients]
  states = two.stack(*[algorithm.client_state_init(init) for i in clients])
  personal = jax.jit(jax.vmap(algorithm.personalization.personal_params,
                              in_axes=(None, 0, 0, 0)))(
      sim.server_state, states, two.stack(*[t[0] for t in trains]),
      jax.random.split(jax.random.key(0), two.NUM_CLIENTS))
  lr_now = LR * LR_DECAY**CONFIG.num_rounds
  for i, (_, steps) in enumerate(trains):
    tuned = two.local_sgd(want, steps, lr_now)
    two.assert_close(two.row(personal, i), tuned)
    assert not np.allclose(tuned['params']['Dense_0']['kernel'],
                           want['params']['Dense_0']['kernel'], rtol=1e-3)


@pytest.mark.parametrize('steps', [-1, 2.0, True])
def test_bad_finetune_steps_is_an_error(steps):
  with pytest.raises(SettingError, match='finetune_steps'):
    fedavg_ft(two.model().apply, LocalSGD(0.1), optax.sgd(1.0),
              finetune_steps=steps)
