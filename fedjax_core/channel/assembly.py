"""A run's channel from its settings: which stages, in which order.

    broadcast:  downlink compression
    client:     label flipping, backdoor poisoning, client momentum (MoNNA;
                DP-BREM, i.e. centered clipping under client-level DP),
                compression, RQM
    cohort:     model attacks, backdoor boost, norm bound, centering
                (DP-BREM), client-level DP
    reduce:     secure sum | robust rule | mean

Attacks act on the messages as the server receives them (after the
clients' compression and quantization), before any defence: the backdoor's
boost is the attacker's own scaling of what it sends, so it comes before
the norm bound, the server's first defence, which must see the boosted
message to undo the boost. The norm bound comes before client-level DP
(whose own clipping then bounds already-bounded messages: the tighter bound
wins), before secure aggregation (which hides the messages, so the bound
stands for one the clients prove) and before a robust rule (which then
ranks bounded messages).
"""

import dataclasses

from fedjax_core.channel import aggregation
from fedjax_core.channel import attacks
from fedjax_core.channel import backdoor as backdoor_lib
from fedjax_core.channel import dp
from fedjax_core.channel import downlink as downlink_lib
from fedjax_core.channel import norm_bound as norm_bound_lib
from fedjax_core.channel import rqm as rqm_lib
from fedjax_core.channel import uplink as uplink_lib
from fedjax_core.channel.stage import Chain, chain
from fedjax_core.errors import SettingError


def check_robust_dp(robust: aggregation.RobustAggregation | None,
                    clip_norm: float | None) -> None:
  """Raises SettingError unless a robust rule and client-level DP (clip
  norm `clip_norm`) combine: only centered clipping with one iteration and
  the DP clip norm as its radius has a sensitivity the noise can be
  calibrated to (DP-BREM, Gu et al. 2023)."""
  if robust is None or clip_norm is None:
    return
  if robust.rule != 'centered_clip' or robust.nnm:
    raise SettingError(
        'robust.rule', f'Client-level DP noise needs a bounded sensitivity; '
        f'the robust rule {robust.rule!r}{" with mixing" if robust.nnm else ""}'
        ' has none. Use centered_clip (DP-BREM) or drop one of them.')
  if robust.clip_iters != 1:
    raise SettingError(
        'robust.clip_iters', 'Under client-level DP centered clipping runs '
        f'one iteration (DP-BREM); got {robust.clip_iters}.')
  if robust.clip_radius != clip_norm:
    raise SettingError(
        'robust.clip_radius', 'Under client-level DP the centered-clipping '
        f'radius is the DP clip norm; got radius {robust.clip_radius:g} and '
        f'clip norm {clip_norm:g}: set them equal.')


def build_chain(*, downlink: uplink_lib.Uplink | None = None,
                uplink: uplink_lib.Uplink | None = None,
                attack: attacks.Attack | None = None,
                num_classes: int | None = None,
                robust: aggregation.RobustAggregation | None = None,
                clients_per_round: int | None = None,
                client_dp=None, secure=None,
                rqm: rqm_lib.RQMSettings | None = None,
                rqm_privacy: rqm_lib.RQMPrivacy | None = None,
                backdoor: backdoor_lib.Backdoor | None = None,
                norm_bound: float | None = None,
                num_clients: int | None = None,
                example_shape: tuple[int, ...] | None = None) -> Chain:
  """The checked chain of a run's channel.

  Args:
    downlink: compression of the broadcast, or None.
    uplink: compression (and momentum) of the clients' messages, or None.
    attack: the Byzantine clients' attack, or None.
    num_classes: the dataset's classes (label flipping), or None if its
      labels are not one class per example.
    robust: a robust rule, or None for the mean.
    clients_per_round: the cohort (Multi-Krum's default selection).
    client_dp: a `privacy.ClientLevelPrivacy` for client-level DP, or None.
    secure: a `secure_aggregation.SecAggConfig`, or None.
    rqm: RQM's settings, or None.
    rqm_privacy: RQM's accountant.
    backdoor: the backdoor attack, or None.
    norm_bound: M, the L2 bound of every message, or None.
    num_clients: the population (the backdoor's attackers).
    example_shape: one example's shape (the backdoor's trigger).

  Examples:
    >>> pipeline = build_chain(uplink=uplink_lib.Uplink('topk'))
  """
  dp_config = None if client_dp is None else client_dp.dp_config
  check_robust_dp(robust, None if dp_config is None else dp_config.clip_norm)
  attack_stages = () if attack is None else attacks.attack_stages(
      attack, num_classes)
  if backdoor is not None:
    attack_stages += backdoor_lib.backdoor_stages(
        backdoor, num_clients, example_shape, num_classes)
  stages = []
  if downlink is not None:
    stages.append(downlink_lib.broadcast_stage(downlink))
  stages += [s for s in attack_stages if s.phase == 'client']
  momentum = None if uplink is None else uplink.momentum
  if robust is not None and (robust.rule == 'monna'
                             or dp_config is not None):  # MoNNA, DP-BREM.
    momentum = robust.momentum
  if momentum is not None:
    stages.append(uplink_lib.momentum_stage(momentum))
  if uplink is not None and uplink.compressor != 'none':
    stages.append(uplink_lib.compression_stage(uplink))
  if rqm is not None:
    stages.append(rqm_lib.rqm_stage(rqm, rqm_privacy))
  stages += [s for s in attack_stages if s.phase == 'cohort']
  if norm_bound is not None:
    stages.append(norm_bound_lib.norm_bound_stage(norm_bound))
  if dp_config is not None:
    if robust is not None:  # DP-BREM's centered clipping.
      stages.append(aggregation.centering_stage())
      robust = None
    stages.append(dp.client_dp_stage(dp_config, client_dp))
  if secure is not None:
    stages.append(aggregation.secure_sum_stage(secure))
  if robust is not None:
    if robust.rule == 'multi_krum' and robust.num_selected is None:
      robust = dataclasses.replace(
          robust, num_selected=clients_per_round - robust.num_byzantine)
    stages.append(aggregation.robust_stage(robust))
  if secure is None and robust is None:
    stages.append(aggregation.mean())
  return chain(*stages)
