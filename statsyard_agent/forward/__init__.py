"""Forwarding rolled-up series to the engines a fleet already runs, at least once.

Sinks: Graphite plaintext, Prometheus remote write 1.0 (each with a durable on-disk spool) and a
StatsD relay sharded by consistent hashing. See ``docs/scale-out.md``.
"""

from ._config import SinkConfig as SinkConfig
from ._config import parse_forward as parse_forward
from ._config import parse_sink as parse_sink
from ._encode import GraphiteEncoder as GraphiteEncoder
from ._encode import RemoteWriteEncoder as RemoteWriteEncoder
from ._errors import ForwardError as ForwardError
from ._errors import RejectedError as RejectedError
from ._errors import SendError as SendError
from ._errors import SpoolError as SpoolError
from ._hub import ForwardHub as ForwardHub
from ._metrics import ForwardCollector as ForwardCollector
from ._metrics import registry_batch as registry_batch
from ._relay import HashRing as HashRing
from ._relay import StatsdRelay as StatsdRelay
from ._sink import Backoff as Backoff
from ._sink import BatchSink as BatchSink
from ._spool import Spool as Spool
