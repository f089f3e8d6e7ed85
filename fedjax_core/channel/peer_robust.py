"""Byzantine peers in decentralized (gossip) learning, and robust gossip.

In decentralized learning a Byzantine node talks to each neighbour over its
own link, so it may send a different message to each (He, Karimireddy and
Jaggi 2022). `received` builds what every node receives in each of its
`mixing_weights.Mixing` slots, `[N, K, d]`: an honest sender's model, or the
attack's message on that edge. `aggregate` then mixes, per node, its own
model with what it received, by the plain gossip average or a robust rule.
Node models are flat vectors: `x` is `[N, d]` (the engine ravels pytrees).
A slot of weight 0 (padding, or a dead link) is not received and has no
influence on any result.

Attacks (the threat model of He et al. 2022: the Byzantine nodes collude
and know every model, but cannot touch messages between honest nodes):

- sign flip (Li, Xu, Chen, Giannakis and Ling, AAAI 2019, "RSA:
  Byzantine-Robust Stochastic Aggregation Methods for Distributed Learning
  from Heterogeneous Datasets"): `attacks.sign_flip` on the models; a
  Byzantine node sends -scale times its own model to every neighbour.
- Gaussian (Blanchard, El Mhamdi, Guerraoui and Stainer, NeurIPS 2017):
  `attacks.gaussian` per edge; an independent N(0, stddev^2 I) model on
  every Byzantine link.
- A Little Is Enough (Baruch, Baruch and Goldberg, NeurIPS 2019), per
  receiver as in He et al.'s decentralized adaptation: to honest node i
  every Byzantine neighbour sends mu_i - z sigma_i, the coordinate-wise
  mean and population std of the honest models i holds (its own and its
  honest neighbours').
- Inner Product Manipulation (Xie, Koyejo and Gupta, UAI 2020), per
  receiver: `attacks.ipm` over the models i holds; -epsilon times their
  honest mean.
- Dissensus (He, Karimireddy and Jaggi 2022, "Byzantine-Robust
  Decentralized Learning via ClippedGossip", arXiv:2202.01545): to honest
  node i every Byzantine neighbour sends
  x_i - eps sum_{honest k in N(i)} w_ik (x_k - x_i) / sum_{Byzantine j in
  N(i)} w_ij, so that plain gossip moves i by -eps times the pull of its
  honest neighbours: eps = 1 cancels it (i never reaches consensus), eps >
  1 pushes i away.

Robust rules, each node over its own model and its received slots:

- 'mean': plain gossip, self_weight_i x_i + sum_k w_ik r_ik.
- 'median' and 'trimmed_mean': `robust_aggregation.coordinate_median` and
  `trimmed_mean` (Yin, Chen, Ramchandran and Bartlett, ICML 2018) over
  {x_i} and the received slots, unweighted (presence only), as the
  decentralized variants of He et al. 2022.
- 'clipped_gossip' (He et al. 2022, self-centered clipping):
  x_i + sum_k w_ik clip(r_ik - x_i, tau_i), clip(z, tau) = z min(1,
  tau / ||z||), by `robust_aggregation.centered_clip` centred on x_i.
- 'nna': MoNNA's nearest-neighbour averaging (Farhadkhani, Guerraoui,
  Gupta, Hoang, Pinot and Stephan, ICML 2023, "Robust Collaborative
  Learning with Linear Gradient Overhead"), by
  `robust_aggregation.nearest_neighbor_average` centred on x_i.

All functions are pure and jittable with the strings, `num_byzantine` and a
Python `clip_radius` static; the Byzantine set and the mixing are traced.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_core.channel import attacks
from fedjax_core.channel import robust_aggregation
from fedjax_core.channel.mixing_weights import Mixing
from fedjax_core.errors import SettingError

PEER_ATTACKS = ('none', 'sign_flip', 'gaussian', 'alie', 'ipm', 'dissensus')
PEER_RULES = ('mean', 'median', 'trimmed_mean', 'clipped_gossip', 'nna')


def byzantine_nodes(key: jax.Array, num_nodes: int, fraction: float
                    ) -> jax.Array:
  """Marks exactly round(fraction * num_nodes) nodes, uniformly at random,
  as Byzantine (`attacks.byzantine_mask` over nodes that are all real).

  The set is a pure function of `key`: a run-level key (e.g. the root key
  folded with the gossip stream) fixes it for the whole run, as in He et
  al. 2022, where the Byzantine nodes are given; a round key redraws it
  each round.

  Args:
    key: the key the set is drawn from.
    num_nodes: N (static).
    fraction: the Byzantine share of the nodes, in [0, 1).

  Returns:
    `[N]` bool, True for the Byzantine nodes.

  Raises:
    SettingError: for a fraction outside [0, 1).

  Examples:
    >>> int(byzantine_nodes(jax.random.key(0), 10, 0.2).sum())
    2
  """
  if not 0 <= fraction < 1:
    raise SettingError(
        'gossip.byzantine_fraction', 'The Byzantine share of the nodes must '
        f'be in [0, 1), got {fraction!r}; lower it below 1.')
  return attacks.byzantine_mask(key, jnp.ones((num_nodes,), bool), fraction)


def received(x: jax.Array, mixing: Mixing, byzantine: jax.Array,
             attack: str, key: jax.Array, *, scale: float = 1.0,
             stddev: float = 1.0, alie_z: float | None = None,
             ipm_epsilon: float = 0.1, dissensus_epsilon: float = 1.0
             ) -> jax.Array:
  """What every node receives in each of its mixing slots.

  Slot k of node i carries `x[neighbours[i, k]]` from an honest sender, or
  the attack's message on that edge from a Byzantine one (see the module
  docstring; 'none' has the Byzantine nodes behave honestly). The
  per-receiver attacks ('alie', 'ipm', 'dissensus') compute from what
  receiver i holds: its own model and the models of its honest neighbours
  on live links (weight > 0). What Byzantine receivers get is whatever the
  same formulas give; it matters to nobody. Slots of weight 0 carry a
  value too, which `aggregate` ignores.

  Args:
    x: `[N, d]` every node's (honest) model.
    mixing: the round's `mixing_weights.Mixing`, `[N, K]` slots.
    byzantine: `[N]` bool, e.g. from `byzantine_nodes`.
    attack: one of `PEER_ATTACKS` (static).
    key: the attack's randomness (used by 'gaussian').
    scale: sign flip's scale.
    stddev: the Gaussian attack's std.
    alie_z: ALIE's z; None takes, per receiver i, Baruch et al.'s z_max
      (`attacks.alie_z`) for n = 1 + i's live links and f = its Byzantine
      ones, f capped at floor(n / 2) so that z stays finite where the
      Byzantine neighbours are a majority.
    ipm_epsilon: IPM's epsilon.
    dissensus_epsilon: the dissensus attack's eps.

  Returns:
    `[N, K, d]` the received messages.

  Raises:
    SettingError: for an attack not in `PEER_ATTACKS`.

  Examples:
    >>> ring = Mixing(jnp.array([[1, 2], [2, 0], [0, 1]]),
    ...               jnp.full((3, 2), 1 / 3), jnp.full(3, 1 / 3))
    >>> out = received(jnp.array([[1.0], [2.0], [4.0]]), ring,
    ...                jnp.array([False, True, False]), 'sign_flip',
    ...                jax.random.key(0), scale=2.0)
    >>> out[:, :, 0].tolist()  # Node 1 sends -4 to nodes 0 and 2.
    [[-4.0, 4.0], [4.0, 1.0], [1.0, -4.0]]
  """
  if attack not in PEER_ATTACKS:
    raise SettingError('gossip.attack', f'Unknown peer attack {attack!r}; '
                       f'valid: {", ".join(PEER_ATTACKS)}.')
  neighbours = mixing.neighbours
  honest = x[neighbours]
  if attack == 'none':
    return honest
  if attack == 'sign_flip':
    return attacks.sign_flip(x, byzantine, scale)[neighbours]
  from_byzantine = byzantine[neighbours]
  if attack == 'gaussian':
    n, k, d = honest.shape
    flat = attacks.gaussian(honest.reshape(n * k, d),
                            from_byzantine.reshape(n * k), key, stddev)
    return flat.reshape(n, k, d)
  live = mixing.weights > 0
  if attack == 'ipm':
    def one_receiver(x_i, honest_i, from_byzantine_i, live_i):
      # Row 0 is i's own model; `attacks.ipm` averages the real honest rows.
      rows = jnp.concatenate([x_i[None], honest_i])
      is_byzantine = jnp.concatenate([jnp.zeros(1, bool), from_byzantine_i])
      is_real = jnp.concatenate([jnp.ones(1, bool), live_i])
      return attacks.ipm(rows, is_byzantine, is_real, ipm_epsilon)[1:]

    return jax.vmap(one_receiver)(x, honest, from_byzantine, live)
  if attack == 'alie':
    message = _alie_messages(x, honest, live, from_byzantine, alie_z)
  else:  # 'dissensus'
    message = _dissensus_messages(x, honest, mixing.weights, live,
                                  from_byzantine, dissensus_epsilon)
  return jnp.where(from_byzantine[..., None], message[:, None].astype(x.dtype),
                   honest)


def _alie_messages(x: jax.Array, honest: jax.Array, live: jax.Array,
                   from_byzantine: jax.Array, z: float | None) -> jax.Array:
  """`[N, d]` ALIE's message to each receiver: mu_i - z sigma_i over i's own
  model and its live honest neighbours' (population std, ddof 0, as
  `attacks.alie`)."""
  values = jnp.concatenate([x[:, None], honest], axis=1)
  held = jnp.concatenate([jnp.ones((x.shape[0], 1), bool),
                          live & ~from_byzantine], axis=1)
  where = jnp.broadcast_to(held[..., None], values.shape)
  mean = jnp.mean(values, axis=1, where=where)
  std = jnp.std(values, axis=1, where=where)
  if z is None:
    n = 1 + jnp.sum(live, axis=1)
    f = jnp.sum(live & from_byzantine, axis=1)
    z = attacks.alie_z(n, jnp.minimum(f, n // 2))[:, None]
  return mean - z * std


def _dissensus_messages(x: jax.Array, honest: jax.Array, weights: jax.Array,
                        live: jax.Array, from_byzantine: jax.Array,
                        epsilon: float) -> jax.Array:
  """`[N, d]` the dissensus message to each receiver (He et al. 2022):
  x_i - eps sum_honest w_ik (x_k - x_i) / sum_Byzantine w_ij; x_i where i
  has no live Byzantine neighbour."""
  honest_weights = jnp.where(live & ~from_byzantine, weights, 0.0)
  pull = jnp.einsum('nk,nkd->nd', honest_weights, honest - x[:, None])
  byzantine_weight = jnp.sum(jnp.where(live & from_byzantine, weights, 0.0),
                             axis=1)
  safe = jnp.where(byzantine_weight > 0, byzantine_weight, 1.0)
  return x - epsilon * pull / safe[:, None]


def aggregate(x: jax.Array, received: jax.Array, mixing: Mixing,
              rule: str, *, num_byzantine: int = 0,
              clip_radius: float | jax.Array | None = None) -> jax.Array:
  """Each node's new model from its own and what it received, by `rule`.

  Node i's values are x_i and its received slots r_ik with weight
  w_ik > 0 (n_i of them, its degree this round):

  - 'mean': self_weight_i x_i + sum_k w_ik r_ik.
  - 'median': the coordinate-wise median of the n_i + 1 values.
  - 'trimmed_mean': per coordinate, drops the b largest and b smallest of
    the n_i + 1 values and averages the rest.
  - 'clipped_gossip': x_i + sum_k w_ik clip(r_ik - x_i, tau_i) /
    (self_weight_i + sum_k w_ik) by `robust_aggregation.centered_clip` (one
    iteration centred on x_i); the denominator is 1 for the row-stochastic
    mixings of `topology`, making it He et al.'s update exactly. tau_i is
    `clip_radius` if given; by default it is adaptive: the (b+1)-th largest
    of i's distances ||r_ik - x_i||, so exactly the b farthest slots are
    clipped (to the next one's distance). That is the count form of He et
    al.'s heuristic of clipping the neighbours that carry the Byzantine
    weight (their code: the second largest for one Byzantine neighbour);
    with b = 0 nothing is clipped and the rule is plain gossip.
  - 'nna': the plain mean of the n_i + 1 - b values nearest x_i (x_i
    itself first), MoNNA's averaging.

  The robust rules weigh the values equally (the gossip weights only say
  which slots were received), as their decentralized forms in He et al.
  2022 and Farhadkhani et al. 2023 do; only 'mean' and 'clipped_gossip' use
  the weights. Messages are assumed finite: a Byzantine inf or NaN reaches
  'mean' and can turn 'clipped_gossip' into NaN.

  With concrete (not traced) mixing weights every node's degree is checked
  against b (`check_degrees`); under `jit` only the bound by the slot count
  K is, and a node below its bound gets the rule's degenerate form
  (trimmed mean -> median, nna -> at least x_i, adaptive tau_i -> 0, so
  x_i stays).

  Args:
    x: `[N, d]` the nodes' own models.
    received: `[N, K, d]` from `received`.
    mixing: the round's `mixing_weights.Mixing`.
    rule: one of `PEER_RULES` (static).
    num_byzantine: b, the Byzantine neighbours each node tolerates (static).
    clip_radius: 'clipped_gossip''s fixed tau > 0 for every node (a Python
      float, or an array traced or of shape `[N]`); None: adaptive.

  Returns:
    `[N, d]` the nodes' aggregated models.

  Raises:
    SettingError: for an unknown rule, b < 0, a non-positive clip radius,
      or b too large for a node's degree.

  Examples:
    >>> ring = Mixing(jnp.array([[1, 2], [2, 0], [0, 1]]),
    ...               jnp.full((3, 2), 1 / 3), jnp.full(3, 1 / 3))
    >>> x = jnp.array([[0.0], [3.0], [30.0]])
    >>> r = received(x, ring, jnp.zeros(3, bool), 'none', jax.random.key(0))
    >>> aggregate(x, r, ring, 'median', num_byzantine=1)[:, 0].tolist()
    [3.0, 3.0, 3.0]
  """
  _check_rule(rule, num_byzantine, clip_radius, mixing.weights.shape[1])
  weights = _concrete(mixing.weights)
  if weights is not None:
    check_degrees(Mixing(mixing.neighbours, weights, mixing.self_weight),
                  rule, num_byzantine, clip_radius)
  live = mixing.weights > 0
  received = jnp.where(live[..., None], received, 0.0).astype(x.dtype)
  if rule == 'mean':
    return (mixing.self_weight[:, None] * x
            + jnp.einsum('nk,nkd->nd', mixing.weights, received))
  values = jnp.concatenate([x[:, None], received], axis=1)
  present = jnp.concatenate([jnp.ones((x.shape[0], 1), bool), live],
                            axis=1).astype(x.dtype)
  if rule == 'median':
    return jax.vmap(robust_aggregation.coordinate_median)(values, present)
  if rule == 'trimmed_mean':
    return jax.vmap(functools.partial(
        robust_aggregation.trimmed_mean, num_trimmed=num_byzantine))(
            values, present)
  if rule == 'nna':
    return jax.vmap(functools.partial(
        robust_aggregation.nearest_neighbor_average,
        num_byzantine=num_byzantine))(values, present, x)
  # 'clipped_gossip'
  if clip_radius is None:
    radius = adaptive_clip_radius(x, received, mixing, num_byzantine)
  else:
    radius = jnp.broadcast_to(jnp.asarray(clip_radius, x.dtype),
                              (x.shape[0],))
  gossip_weights = jnp.concatenate(
      [mixing.self_weight[:, None], jnp.where(live, mixing.weights, 0.0)],
      axis=1).astype(x.dtype)
  return jax.vmap(robust_aggregation.centered_clip)(
      values, gossip_weights, x, radius)


def adaptive_clip_radius(x: jax.Array, received: jax.Array, mixing: Mixing,
                         num_byzantine: int) -> jax.Array:
  """`[N]` ClippedGossip's adaptive tau_i: the (b+1)-th largest distance
  ||r_ik - x_i|| over node i's live slots, 0 where it has b or fewer.

  Args:
    x: `[N, d]` the nodes' own models.
    received: `[N, K, d]` the received messages.
    mixing: the round's `mixing_weights.Mixing`.
    num_byzantine: b (static, < K).

  Examples:
    >>> full = Mixing(jnp.array([[1, 2]]), jnp.full((1, 2), 0.25),
    ...               jnp.array([0.5]))
    >>> adaptive_clip_radius(jnp.zeros((1, 2)),
    ...                      jnp.array([[[3.0, 4.0], [0.0, 1.0]]]), full,
    ...                      num_byzantine=1).tolist()
    [1.0]
  """
  num_slots = received.shape[1]
  if not 0 <= num_byzantine < num_slots:
    raise SettingError(
        'gossip.num_byzantine', 'The adaptive clip radius is the (b+1)-th '
        f'largest of a node\'s {num_slots} slot distances, so b must be in '
        f'[0, {num_slots - 1}], got num_byzantine={num_byzantine}; lower it '
        'or use a denser topology.')
  distances = jnp.linalg.norm(received - x[:, None], axis=-1)
  distances = jnp.where(mixing.weights > 0, distances, -jnp.inf)
  ascending = jnp.sort(distances, axis=1)
  return jnp.maximum(ascending[:, num_slots - 1 - num_byzantine], 0.0)


def check_degrees(mixing: Mixing, rule: str, num_byzantine: int,
                  clip_radius: float | jax.Array | None = None) -> None:
  """Raises `SettingError` if some node has too few live neighbours for
  `rule` to tolerate b = `num_byzantine` Byzantine ones.

  A node's degree n_i is its slots of weight > 0. 'median',
  'trimmed_mean' and 'nna' need an honest majority of the n_i + 1 values
  (n_i >= 2b, as `aggregation.RobustAggregation.check_cohort` asks 2f + 1
  clients); the adaptive 'clipped_gossip' needs a (b+1)-th distance
  (n_i >= b + 1); 'mean' and 'clipped_gossip' with a fixed radius need
  nothing. Call it at build time with each round's mixing (or the static
  topology's); needs concrete weights.

  Examples:
    >>> ring = Mixing(jnp.array([[1, 2], [2, 0], [0, 1]]),
    ...               jnp.full((3, 2), 1 / 3), jnp.full(3, 1 / 3))
    >>> check_degrees(ring, 'trimmed_mean', 1)  # Degree 2 >= 2 * 1.
  """
  _check_rule(rule, num_byzantine, clip_radius, mixing.weights.shape[1])
  needed, why = _degree_bound(rule, num_byzantine, clip_radius)
  if not needed:
    return
  degrees = np.sum(np.asarray(mixing.weights) > 0, axis=1)
  low = np.flatnonzero(degrees < needed)
  if low.size:
    node = int(low[0])
    raise SettingError(
        'gossip.num_byzantine',
        f'Node {node} has degree {int(degrees[node])} (live neighbours) '
        f'this round ({low.size} node(s) below the bound), but the rule '
        f'{rule} tolerating num_byzantine={num_byzantine} needs degree >= '
        f'{needed} ({why}); lower num_byzantine or use a denser topology.')


def _degree_bound(rule: str, num_byzantine: int,
                  clip_radius: float | jax.Array | None) -> tuple[int, str]:
  """The least degree `rule` needs against b Byzantine neighbours, and why."""
  if rule in ('median', 'trimmed_mean', 'nna'):
    return 2 * num_byzantine, 'an honest majority of its values, 2b + 1'
  if rule == 'clipped_gossip' and clip_radius is None:
    return num_byzantine + 1, ('the adaptive radius is the (b+1)-th largest '
                               'distance')
  return 0, ''


def _check_rule(rule: str, num_byzantine: int,
                clip_radius: float | jax.Array | None, num_slots: int
                ) -> None:
  """The checks that need no concrete mixing: the rule's name, b >= 0,
  a positive Python radius, and the degree bound against K slots."""
  if rule not in PEER_RULES:
    raise SettingError('gossip.rule', f'Unknown gossip rule {rule!r}; '
                       f'valid: {", ".join(PEER_RULES)}.')
  if num_byzantine < 0:
    raise SettingError(
        'gossip.num_byzantine', 'The Byzantine neighbours a node tolerates '
        f'(num_byzantine) must be >= 0, got {num_byzantine}.')
  radius = None if clip_radius is None else _concrete(clip_radius)
  if radius is not None and not np.all(radius > 0):
    raise SettingError(
        'gossip.clip_radius', 'ClippedGossip\'s fixed clip_radius must be '
        f'positive, got {clip_radius!r}; or leave it unset for the '
        'adaptive radius.')
  needed, why = _degree_bound(rule, num_byzantine, clip_radius)
  if needed > num_slots:
    raise SettingError(
        'gossip.num_byzantine',
        f'The rule {rule} tolerating num_byzantine={num_byzantine} needs '
        f'every node\'s degree >= {needed} ({why}), but the topology gives '
        f'a node at most {num_slots} neighbours; lower num_byzantine or '
        'use a denser topology.')


def _concrete(array: jax.Array | float) -> np.ndarray | None:
  """`array` as numpy, or None while it is being traced."""
  if isinstance(array, jax.core.Tracer):
    return None
  return np.asarray(array)
