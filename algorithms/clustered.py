"""Clustered federated learning: k models, each client trains the one that
fits its data best.

IFCA: Ghosh et al. 2020, "An Efficient Framework for Clustered Federated
Learning" (the model-averaging variant). HypCluster: Mansour et al. 2020,
"Three Approaches for Personalization with Applications to Federated
Learning", as google/fedjax implements it (`fedjax.algorithms.hyp_cluster`).

The server holds k models stacked on a leading axis and broadcasts them all.
A client picks the cluster j whose model has the least loss on its data,
trains it by local SGD and sends the k-stacked `e_j (y_K - x_j)` with the
one-hot `e_j` itself, weighted by its example count (or 1). The cohort's
weighted mean of that is, per cluster, `s_j` (the cluster's share of the
cohort's weight) and `s_j` times the weighted mean delta of its clients, so
the server divides and applies its optimizer to each cluster that someone
chose; the others keep their model and optimizer state. The message stays a
plain weighted mean, so secure aggregation and client-level DP compose with
it (DP noise also enters the shares the server divides by, which amplifies
it for rarely chosen clusters); coordinate-wise robust rules do not (a
median of one-hots is no share). It is k models long, zeros outside the
client's cluster: top-k with a fraction >= 1/k drops nothing.

The two differ as fedjax's HypCluster differs from IFCA:
- initialization: IFCA keeps the given model as cluster 0 and draws the
  others with `model_init`; HypCluster draws all k (fedjax's `random_init`;
  its k-means++ initializer trains every client before round 0, which no
  `server_init` can);
- assignment: an IFCA client sees its data only through its local steps,
  so it picks by the loss on its first batch; HypCluster picks by the mean
  loss of the round's k models over all the batches it trains on (fedjax's
  maximization step over the client's whole data), so it trains all k
  candidates side by side (k times the compute) and keeps the chosen one
  (its step metric `loss` is the least of the k candidates').
The papers average a cluster's clients uniformly (IFCA, `weighted=False`)
or by example count (fedjax's HypCluster, the default).
"""

from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from fedjax_core.algorithm import (Algorithm, Batch, ClientOutput, Frozen,
                                   Personalization)
from fedjax_core.errors import check_count
from fedjax_core.toolkit import fine_tuning
from fedjax_core.toolkit import local_sgd as local_sgd_lib
from fedjax_core.toolkit import losses
from fedjax_core.toolkit import optimizers

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
ModelInit = Callable[[jax.Array], PyTree]


@flax.struct.dataclass
class ClusterServerState:
  """The k cluster models and their server optimizer states, stacked on a
  leading axis, the rounds done, and the last cohort's weight share of each
  cluster (`[k]`; zeros before round 0)."""

  params: PyTree
  opt_state: optax.OptState
  round_num: jax.Array
  share: jax.Array


@flax.struct.dataclass
class ClusterClientState:
  """The cluster the client chose in its last round (int32) and whether it
  ever trained (float32)."""

  cluster: jax.Array
  trained: jax.Array


@flax.struct.dataclass
class LocalState:
  """The round's k models, the model(s) in training, and the choice so far
  (IFCA: the one-hot of the cluster, zeros before the first real batch;
  HypCluster: each cluster's summed loss on the batches seen)."""

  models: Frozen
  params: PyTree
  scores: jax.Array
  learning_rate: jax.Array


class ClusterMessage(NamedTuple):
  """`deltas`: k-stacked, the client's delta at its cluster and zeros
  elsewhere; `choice`: `[k]` the one-hot of its cluster (zeros without
  data)."""

  deltas: PyTree
  choice: jax.Array


def ifca(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
         server_optimizer: optax.GradientTransformation, *,
         weighted: bool = True, model_init: ModelInit,
         num_clusters: int = 3, select_batches: int = 2) -> Algorithm:
  """IFCA: each client trains the cluster model of least loss on its first
  batch.

  Args:
    apply_fn: `(params, x) -> logits` of the model.
    local_sgd: the clients' SGD.
    server_optimizer: applied per cluster to the pseudo-gradient `-mean
      delta` of the cluster's clients.
    weighted: weight clients by example count, or equally (the paper's).
    model_init: `key -> params`, draws clusters 1 .. k-1 (cluster 0 is the
      given model).
    num_clusters: k, >= 1.
    select_batches: batches of its training split on which a client picks
      its personal model, the cluster of least mean loss; 0 takes the
      cluster it chose in its last round.

  Returns:
    The algorithm. `server_params` are the k stacked models, `full_params`
    the one chosen by the largest share of the last cohort. A client that
    never trained gets, as its personal model, the cluster of least loss
    on its batches (with `select_batches=0`, or without data: the largest
    share's).

  Examples:
    >>> algorithm = ifca(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                  model_init=model.init, num_clusters=3)
  """
  return _clustered(apply_fn, local_sgd, server_optimizer, weighted,
                    model_init, num_clusters, select_batches,
                    hyp_cluster=False)


def hypcluster(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
               server_optimizer: optax.GradientTransformation, *,
               weighted: bool = True, model_init: ModelInit,
               num_clusters: int = 3, select_batches: int = 2
               ) -> Algorithm:
  """HypCluster: each client trains the hypothesis of least mean loss over
  all its local batches; all k hypotheses are drawn with `model_init` (the
  given model is not one of them). Arguments and results as `ifca`'s.

  Examples:
    >>> algorithm = hypcluster(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                        model_init=model.init, num_clusters=3)
  """
  return _clustered(apply_fn, local_sgd, server_optimizer, weighted,
                    model_init, num_clusters, select_batches,
                    hyp_cluster=True)


def _clustered(apply_fn, local_sgd, server_optimizer, weighted, model_init,
               num_clusters, select_batches, *, hyp_cluster):
  check_count('num_clusters', num_clusters, 1)
  check_count('select_batches', select_batches)
  k = num_clusters
  loss_and_grad = losses.loss_and_grad(apply_fn)
  pick = lambda models, cluster: jax.tree.map(lambda m: m[cluster], models)

  def cluster_losses(models, batch: Batch):
    return jax.vmap(lambda params: losses.cross_entropy(
        apply_fn(params, batch.x), batch.y, batch.mask))(models)

  def server_init(params, rng):
    keys = jax.random.split(rng, k)
    drawn = [model_init(key) for key in keys[0 if hyp_cluster else 1:]]
    models = drawn if hyp_cluster else [params] + drawn
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *models)
    return ClusterServerState(
        params=stacked, opt_state=jax.vmap(server_optimizer.init)(stacked),
        round_num=jnp.int32(0), share=jnp.zeros(k, jnp.float32))

  def client_init(server_state, client_state, rng):
    del client_state, rng
    models = server_state.params
    return LocalState(
        models=Frozen(models),
        params=models if hyp_cluster else pick(models, 0),
        scores=jnp.zeros(k, jnp.float32),
        learning_rate=local_sgd.learning_rate_at(server_state.round_num))

  def ifca_step(local, batch, rng):
    del rng
    models = local.models.value
    choosing = (jnp.sum(local.scores) == 0) & (jnp.sum(batch.mask) > 0)
    scores = jax.lax.cond(
        choosing, lambda: jax.nn.one_hot(
            jnp.argmin(cluster_losses(models, batch)), k),
        lambda: local.scores)
    params = jax.tree.map(lambda p, m: jnp.where(choosing, m, p),
                          local.params, pick(models, jnp.argmax(scores)))
    loss, grads = loss_and_grad(params, batch)
    params = local_sgd.step(params, grads, local.learning_rate)
    return local.replace(params=params, scores=scores), {'loss': loss}

  def hyp_cluster_step(local, batch, rng):
    del rng
    scores = local.scores + jnp.sum(batch.mask) * cluster_losses(
        local.models.value, batch)
    loss, grads = jax.vmap(loss_and_grad, in_axes=(0, None))(local.params,
                                                             batch)
    params = jax.vmap(local_sgd.step, in_axes=(0, 0, None))(
        local.params, grads, local.learning_rate)
    return local.replace(params=params, scores=scores), {
        'loss': jnp.min(loss)}

  def client_final(server_state, client_state, local, info):
    has_data = info.num_steps > 0
    if hyp_cluster:
      cluster, trained = jnp.argmin(local.scores), local.params
    else:
      cluster = jnp.argmax(local.scores)
      trained = jax.tree.map(lambda p: p[None], local.params)
    choice = jax.nn.one_hot(cluster, k) * has_data
    deltas = jax.tree.map(
        lambda t, m: choice.reshape((k,) + (1,) * (m.ndim - 1)) * (t - m),
        trained, server_state.params)
    state = ClusterClientState(
        cluster=jnp.where(has_data, cluster, client_state.cluster),
        trained=jnp.where(has_data, 1.0, client_state.trained))
    return ClientOutput(
        message=ClusterMessage(deltas=deltas, choice=choice),
        weight=info.num_examples if weighted else jnp.float32(1.0),
        client_state=state, metrics={'delta_norm': optax.tree.norm(deltas)})

  def update_cluster(params, opt_state, delta, share):
    chosen = share > 0
    step = optax.tree.scale(-1.0 / jnp.where(chosen, share, 1.0), delta)
    new_params, new_opt_state, norm = optimizers.apply_pseudo_gradient(
        server_optimizer, params, opt_state, step)
    kept = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(chosen, n, o), new, old)
    return (kept(new_params, params), kept(new_opt_state, opt_state),
            jnp.where(chosen, norm, 0.0))

  def server_update(server_state, mean, cohort):
    del cohort
    params, opt_state, norms = jax.vmap(update_cluster)(
        server_state.params, server_state.opt_state, mean.deltas,
        mean.choice)
    share = jnp.where(jnp.sum(mean.choice) > 0, mean.choice,
                      server_state.share)
    return ClusterServerState(
        params=params, opt_state=opt_state,
        round_num=server_state.round_num + 1, share=share), {
            'server_update_norm': jnp.sqrt(jnp.sum(norms**2)),
            'clusters_chosen': jnp.sum(mean.choice > 0).astype(jnp.float32),
            **{f'cluster_share_{j}': mean.choice[j] for j in range(k)}}

  def full_params(server_state):
    return pick(server_state.params, jnp.argmax(server_state.share))

  def personal_params(server_state, client_state, train, rng):
    del rng
    cluster = jnp.argmax(server_state.share)
    if select_batches:
      losses_k = jax.vmap(lambda params: fine_tuning.mean_loss(
          apply_fn, params, train))(server_state.params)
      cluster = jnp.where(jnp.sum(train.mask) > 0, jnp.argmin(losses_k),
                          cluster)
    else:
      cluster = jnp.where(client_state.trained > 0, client_state.cluster,
                          cluster)
    return pick(server_state.params, cluster)

  return Algorithm(
      server_init=server_init,
      client_state_init=lambda params: ClusterClientState(
          cluster=jnp.int32(0), trained=jnp.float32(0.0)),
      client_init=client_init,
      local_step=hyp_cluster_step if hyp_cluster else ifca_step,
      client_final=client_final,
      server_update=server_update,
      server_params=lambda server_state: server_state.params,
      full_params=full_params,
      personalization=Personalization(personal_params, select_batches))
