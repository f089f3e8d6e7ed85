"""Norm bounding: the server clips each client's message to L2 norm <= M.

The defence of Sun, Kairouz, Suresh and McMahan, 2019, "Can You Really
Backdoor Federated Learning?" (arXiv:1911.07963): a backdoor needs either
large (boosted) updates or many attackers; bounding every update's norm
before averaging takes the boost away at little cost to the clean task.
It is client-level DP's clipping (`dp.clip_cohort`, flat) without the
noise, as a 'cohort' stage that runs before the reduction. Under secure
aggregation the server cannot see the messages, so there the bound stands
for a norm the clients prove (e.g. in zero knowledge) rather than one the
server enforces.
"""

import jax.numpy as jnp

from fedjax_core.channel import dp
from fedjax_core.channel.stage import Stage
from fedjax_core.errors import SettingError


def check_bound(bound: float) -> None:
  """Raises SettingError unless the norm bound is positive."""
  if not bound > 0:
    raise SettingError('norm_bound', 'The norm bound M must be positive '
                       f'(None for no bound), got {bound!r}.')


def norm_bound_stage(bound: float) -> Stage:
  """A 'cohort' stage clipping each message to L2 norm <= `bound`, with
  metric `norm_bound_clipped`: the share of the cohort's real clients whose
  message was longer than the bound.

  Examples:
    >>> from fedjax_core import channel
    >>> pipeline = channel.chain(norm_bound_stage(1.0), channel.mean())
  """
  check_bound(bound)

  def apply(state, packets, ctx):
    clipped, _, share = dp.clip_cohort(packets.message, bound,
                                       ctx.is_real.astype(jnp.float32))
    return (packets._replace(message=clipped), state,
            {'norm_bound_clipped': share})

  return Stage('norm bound', 'cohort', apply)
