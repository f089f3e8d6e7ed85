"""The channel: every stage a message passes between the clients' local
training and the server update (`fedjax_core.channel.stage`)."""

from fedjax_core.channel.stage import Aggregate
from fedjax_core.channel.stage import Chain
from fedjax_core.channel.stage import Packet
from fedjax_core.channel.stage import PHASES
from fedjax_core.channel.stage import RoundContext
from fedjax_core.channel.stage import Stage
from fedjax_core.channel.stage import chain

__all__ = (
    'Aggregate',
    'Chain',
    'PHASES',
    'Packet',
    'RoundContext',
    'Stage',
    'chain',
)
