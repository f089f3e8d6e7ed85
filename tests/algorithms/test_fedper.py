"""FedPer, FedRep, FedBABU and LG-FedAvg through the whole engine against
numpy re-statements of their papers' rules on three tiny clients.

Two rounds of a cohort of two (clients 1 and 2; client 0 never trains),
minibatches of 2 over 2 local epochs (client 1's last two steps are all
padding, which coupled weight decay would move unless skipped)."""

import functools

import jax
import numpy as np
import optax
import pytest

from algorithms.fedper import fedbabu, fedper, fedrep, lg_fedavg
from fedjax_core.errors import SettingError
from fedjax_core.toolkit.local_sgd import LocalSGD
from fedjax_core.toolkit.personal_layers import PersonalLayers
import two_layer_problem as two

LR = 0.5
LR_DECAY = 0.5
WEIGHT_DECAY = 0.1
FINETUNE_STEPS = 3
HEAD_STEPS = 3
CONFIG = two.config(2, local_epochs=2)
NEVER_TRAINED = 0


def _fedrep_sgd(p, steps, lr):
  """FedRep's round: the first HEAD_STEPS real steps on the head, the
  others on the body."""
  done = 0
  for rows in steps:
    if len(rows):
      trainable = two.HEAD if done < HEAD_STEPS else two.BODY
      p = two.sgd_step(p, rows, lr, trainable, WEIGHT_DECAY)
      done += 1
  return p


_JOINT = functools.partial(two.local_sgd, weight_decay=WEIGHT_DECAY)
_BODY_ONLY = functools.partial(two.local_sgd, trainable=two.BODY,
                               weight_decay=WEIGHT_DECAY)
# name: (factory, its kwargs, weighted, personal layers' names, local SGD).
_CASES = {
    'fedper': (fedper, {'personal_layers': two.HEAD_PATTERN}, False,
               two.HEAD, _JOINT),
    'fedrep': (fedrep, {'personal_layers': two.HEAD_PATTERN,
                        'head_steps': HEAD_STEPS}, True, two.HEAD,
               _fedrep_sgd),
    'fedbabu': (fedbabu, {'personal_layers': two.HEAD_PATTERN}, True,
                two.HEAD, _BODY_ONLY),
    'lg_fedavg': (lg_fedavg, {'personal_layers': PersonalLayers(
        two.HEAD_PATTERN).complement().pattern}, True, two.BODY, _JOINT),
}


def _np_layered(init, personal, client_sgd, weighted, keeps_personal):
  """The shared part after CONFIG's rounds and each client's personal part:
  clients train `client_sgd` from (shared, own personal part) and the
  server averages the shared parts (FedAvg's weights)."""
  shared_names = tuple(n for n in two.ALL if n not in personal)
  shared = two.layers(init, shared_names)
  mine = {i: two.layers(init, personal) for i in range(two.NUM_CLIENTS)}
  for t in range(CONFIG.num_rounds):
    news, weights = [], []
    for cid, steps in two.batches(t, CONFIG).items():
      y = client_sgd(two.merge(shared, mine[cid]), steps,
                     LR * LR_DECAY**t)
      news.append(two.layers(y, shared_names))
      weights.append(sum(map(len, steps)) if weighted else 1.0)
      if keeps_personal:
        mine[cid] = two.layers(y, personal)
    shared = two.weighted_mean(news, weights)
  return shared, mine


@pytest.mark.parametrize('name', sorted(_CASES))
def test_matches_numpy_restatement(name):
  factory, kwargs, weighted, personal, client_sgd = _CASES[name]
  algorithm = factory(
      two.model().apply,
      LocalSGD(LR, lr_decay=LR_DECAY, weight_decay=WEIGHT_DECAY),
      optax.sgd(1.0), weighted=weighted, finetune_steps=FINETUNE_STEPS,
      **kwargs)
  keeps_personal = name != 'fedbabu'
  init, sim = two.run(algorithm, CONFIG)
  assert 'personal_accuracy_mean' in sim.history[-1]
  shared, mine = _np_layered(init, personal, client_sgd, weighted,
                             keeps_personal)
  two.assert_close(algorithm.server_params(sim.server_state), shared)
  two.assert_close(algorithm.full_params(sim.server_state),
                   two.merge(shared, two.layers(init, personal)))

  stacked = sim.store.stacked
  if keeps_personal:
    np.testing.assert_array_equal(stacked.trained, [0.0, 1.0, 1.0])
    for i in range(two.NUM_CLIENTS):
      two.assert_close(two.row(stacked.personal, i), mine[i])
  else:
    assert stacked == ()

  # Every client's model, vmapped as the engine evaluates it, from its
  # state in the store: client 0 never trained.
  trains = [two.eval_batch(i, FINETUNE_STEPS)
            for i in range(two.NUM_CLIENTS)]
  models = jax.jit(jax.vmap(algorithm.personalization.personal_params,
                            in_axes=(None, 0, 0, 0)))(
      sim.server_state, jax.tree.map(np.asarray, stacked),
      two.stack(*[t[0] for t in trains]),
      jax.random.split(jax.random.key(0), two.NUM_CLIENTS))
  lr_now = LR * LR_DECAY**CONFIG.num_rounds
  for i, (_, steps) in enumerate(trains):
    want = two.merge(shared, mine[i])
    if i == NEVER_TRAINED or not keeps_personal:
      want = two.local_sgd(want, steps, lr_now, trainable=personal)
    two.assert_close(two.row(models, i), want)
  fitted = two.row(models, NEVER_TRAINED)
  assert not np.allclose(fitted['params'][personal[0]]['kernel'],
                         init['params'][personal[0]]['kernel'], rtol=1e-3)

  # The algorithm's own ingredient mattered: FedAvg's shared part differs.
  fedavg = two.np_fedavg(init, CONFIG, lr=LR, lr_decay=LR_DECAY,
                         weighted=weighted, weight_decay=WEIGHT_DECAY)
  shared_name = next(iter(shared['params']))
  assert not np.allclose(shared['params'][shared_name]['kernel'],
                         fedavg['params'][shared_name]['kernel'], rtol=1e-3)


def test_fedrep_differs_from_fedper():
  init = two.as_numpy(two.model().init(jax.random.key(0)))
  fedrep_body, _ = _np_layered(init, two.HEAD, _fedrep_sgd, True, True)
  fedper_body, _ = _np_layered(init, two.HEAD, _JOINT, True, True)
  assert not np.allclose(fedrep_body['params']['Dense_0']['kernel'],
                         fedper_body['params']['Dense_0']['kernel'],
                         rtol=1e-3)


@pytest.mark.parametrize('factory', [fedper, fedrep, fedbabu, lg_fedavg])
def test_personal_layers_matching_nothing_is_an_error(factory):
  algorithm = factory(two.model().apply, LocalSGD(0.1), optax.sgd(1.0),
                      personal_layers='^params/Dense_9/')
  params = two.model().init(jax.random.key(0))
  with pytest.raises(SettingError, match='matches no parameter') as error:
    algorithm.server_init(params, jax.random.key(0))
  assert error.value.setting == 'personal_layers'
  with pytest.raises(SettingError, match='matches no parameter'):
    two.run(algorithm, CONFIG)


@pytest.mark.parametrize('kwargs, setting', [
    ({'finetune_steps': -1}, 'finetune_steps'),
    ({'finetune_steps': 1.5}, 'finetune_steps'),
    ({'head_steps': -2}, 'head_steps'),
    ({'head_steps': True}, 'head_steps'),
])
def test_bad_step_counts_are_errors(kwargs, setting):
  with pytest.raises(SettingError, match=setting) as error:
    fedrep(two.model().apply, LocalSGD(0.1), optax.sgd(1.0),
           personal_layers=two.HEAD_PATTERN, **kwargs)
  assert error.value.setting == setting
