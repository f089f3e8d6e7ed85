"""fedjax_core: the engine of a JAX-native federated learning simulator."""

from fedjax_core.channel.aggregation import RobustAggregation
from fedjax_core.channel.aggregation import SecureAggregation
from fedjax_core.algorithm import Algorithm
from fedjax_core.algorithm import is_traced
from fedjax_core.algorithm import Batch
from fedjax_core.algorithm import ClientInfo
from fedjax_core.algorithm import ClientOutput
from fedjax_core.algorithm import Personalization
from fedjax_core.channel.attacks import Attack
from fedjax_core.channel.backdoor import Backdoor
from fedjax_core.engine.batching import CohortBatches
from fedjax_core.engine.batching import client_num_steps
from fedjax_core.engine.batching import cohort_batches
from fedjax_core.engine.batching import step_buckets
from fedjax_core.engine.checkpointing import CheckpointMismatchError
from fedjax_core.engine.checkpointing import Checkpointer
from fedjax_core.data.client_indices import ClientIndices
from fedjax_core.data.federated import CentralDataset
from fedjax_core.data.federated import FederatedDataset
from fedjax_core.engine.decentralized import DecentralizedSimulation
from fedjax_core.engine.evaluation import Evaluator
from fedjax_core.engine.evaluation import LocalEvaluator
from fedjax_core.engine.personal_evaluation import PersonalEvaluator
from fedjax_core.engine.metrics_writer import MetricsWriter
from fedjax_core.engine.metrics_writer import read_metrics
from fedjax_core.engine.placement import client_mesh
from fedjax_core.engine.placement import map_clients
from fedjax_core.engine.placement import reduce_sum
from fedjax_core.engine.placement import reduce_weighted_mean
from fedjax_core.engine.placement import reduce_weighted_sum
from fedjax_core.channel.privacy import ClientDPSettings
from fedjax_core.channel.privacy import SampleDPSettings
from fedjax_core.engine.rounds import CompiledRound
from fedjax_core.engine.rounds import RoundInputs
from fedjax_core.data.sampling import sample_clients
from fedjax_core.engine.config import GossipConfig
from fedjax_core.engine.simulation import Simulation
from fedjax_core.engine.simulation import SimulationConfig
from fedjax_core.engine.simulation import TrainingDivergedError
from fedjax_core.engine.state_store import ClientStateStore
from fedjax_core.channel.uplink import Uplink
from fedjax_core.engine.vmapped_runs import Run
from fedjax_core.engine.vmapped_runs import VmappedRuns

__all__ = (
    'Algorithm',
    'Attack',
    'Backdoor',
    'Batch',
    'CentralDataset',
    'CheckpointMismatchError',
    'Checkpointer',
    'ClientIndices',
    'ClientDPSettings',
    'ClientInfo',
    'ClientOutput',
    'ClientStateStore',
    'CohortBatches',
    'CompiledRound',
    'DecentralizedSimulation',
    'Evaluator',
    'FederatedDataset',
    'GossipConfig',
    'LocalEvaluator',
    'MetricsWriter',
    'Personalization',
    'PersonalEvaluator',
    'RobustAggregation',
    'RoundInputs',
    'Run',
    'SampleDPSettings',
    'SecureAggregation',
    'Simulation',
    'SimulationConfig',
    'TrainingDivergedError',
    'Uplink',
    'VmappedRuns',
    'client_mesh',
    'client_num_steps',
    'cohort_batches',
    'is_traced',
    'map_clients',
    'read_metrics',
    'reduce_sum',
    'reduce_weighted_mean',
    'reduce_weighted_sum',
    'sample_clients',
    'step_buckets',
)
