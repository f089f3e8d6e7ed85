"""What an adversary learns from federated training: gradient inversion of
the messages the server sees (`gradient_inversion`, with its objectives,
label recovery and image metrics) and membership inference on a trained
model or a client's update (`membership`, with shadow runs trained as one
vmapped program in `shadow_runs`). Backdoors, which plant rather than learn,
are channel stages (`fedjax_core.channel.backdoor`)."""

from fedjax_core.adversary.gradient_inversion import InversionConfig
from fedjax_core.adversary.gradient_inversion import InversionResult
from fedjax_core.adversary.gradient_inversion import analytic_dense_inversion
from fedjax_core.adversary.gradient_inversion import invert
from fedjax_core.adversary.image_metrics import MatchedMetrics
from fedjax_core.adversary.image_metrics import label_accuracy
from fedjax_core.adversary.image_metrics import match_reconstructions
from fedjax_core.adversary.image_metrics import psnr
from fedjax_core.adversary.image_metrics import ssim
from fedjax_core.adversary.inversion_objectives import fedavg_delta
from fedjax_core.adversary.inversion_objectives import observed_gradient
from fedjax_core.adversary.label_recovery import recover_labels
from fedjax_core.adversary.membership import Confidences
from fedjax_core.adversary.membership import MembershipScores
from fedjax_core.adversary.membership import example_confidences
from fedjax_core.adversary.membership import lira_offline
from fedjax_core.adversary.membership import lira_online
from fedjax_core.adversary.membership import logit_scale
from fedjax_core.adversary.membership import loss_threshold_scores
from fedjax_core.adversary.membership import roc_metrics
from fedjax_core.adversary.membership import run_confidences
from fedjax_core.adversary.shadow_runs import TrainedRuns
from fedjax_core.adversary.shadow_runs import client_update_membership
from fedjax_core.adversary.shadow_runs import inclusion_masks
from fedjax_core.adversary.shadow_runs import leave_one_out
from fedjax_core.adversary.shadow_runs import run_datasets
from fedjax_core.adversary.shadow_runs import train_runs

__all__ = (
    'analytic_dense_inversion',
    'client_update_membership',
    'Confidences',
    'example_confidences',
    'fedavg_delta',
    'inclusion_masks',
    'InversionConfig',
    'InversionResult',
    'invert',
    'label_accuracy',
    'leave_one_out',
    'lira_offline',
    'lira_online',
    'logit_scale',
    'loss_threshold_scores',
    'match_reconstructions',
    'MatchedMetrics',
    'MembershipScores',
    'observed_gradient',
    'psnr',
    'recover_labels',
    'roc_metrics',
    'run_confidences',
    'run_datasets',
    'ssim',
    'train_runs',
    'TrainedRuns',
)
