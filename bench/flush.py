"""CPU cost of one flush of 100k series (50k counters, 50k timers with ~950k samples), in process.

    PYTHONPATH=. python bench/flush.py [--rounds 5] [--workers 2]

Feeds one interval's lines through the receive path's pre-aggregator, then times each step of
the flush as the agent runs it. ``--workers N`` (the agent's default is 2) feeds them as N receive
workers would instead: N pre-aggregators, each shipping 10 times per interval (a shipment pickled
and unpickled, as over the worker's socket, and merged as it comes), so the timer samples reach
the build in 10 x N chunks, nearly shuffled; "merge" is then only the last round of shipments
(what a flush's own collect merges). The steps: ``Aggregator.merge`` of the partial, ``take_snapshot``,
``BatchTagger.build`` (Etsy's derived series and the quantile sketches, numpy), and
``TSDB.write`` into a fresh data directory (round 0 registers ~800k new stored series; later
rounds are the steady state). ``gc.freeze()`` follows each write, as in the agent. Times are
wall clock, plus the CPU time of the build (``time.process_time``, which the other processes
sharing the machine do not inflate). Figures only.
"""

from __future__ import annotations

import argparse
import gc
import pickle
import random
import tempfile
import time
from pathlib import Path

from statsyard_agent._aggregate import Aggregator
from statsyard_agent._config import build_config
from statsyard_agent._ingest import PreAggregator, SimpleCounts
from statsyard_agent._protocol import Parser
from statsyard_agent._tags import BatchTagger
from statsyard_agent._workers import WorkerSlot
from statsyard_agent.storage import TSDB

#: Shipments per interval and worker with ``--workers`` (the agent's 1 s ships, 10 s flushes).
SHIPS_PER_INTERVAL = 10


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0, help="ship as N receive workers (0: in process)")
    args = parser.parse_args()
    config = build_config({"max_series": 200_000})
    rng = random.Random(7)
    lines = []
    for i in range(1_000_000):  # each counter once, each timer ~19 times
        if i % 20 == 0:
            lines.append(b"bench.flush.requests.c%d:1|c" % (i // 20))
        else:
            lines.append(b"bench.flush.latency.t%d:%d|ms" % (rng.randrange(50_000), rng.randrange(1000)))
    datagrams = [b"\n".join(lines[i : i + 20]) for i in range(0, len(lines), 20)]
    with tempfile.TemporaryDirectory(prefix="statsyard-flush-") as tmp:
        tsdb = TSDB.open(Path(tmp) / "data", config.storage)
        aggregator = Aggregator(config.aggregator)
        tagger = BatchTagger(())
        preagg = PreAggregator(Parser(config.parser), SimpleCounts(), 200_000)
        workers = [
            # A slot's partial() needs only its key table (no socket, no shared memory here).
            (PreAggregator(Parser(config.parser), SimpleCounts(), 200_000), WorkerSlot(i, None, -1, None))
            for i in range(args.workers)
        ]
        stamp = int(time.time()) // 10 * 10
        print("round   merge  snapshot   build (cpu)   write  points")
        for round_ in range(args.rounds):
            if workers:
                per_ship = len(datagrams) // SHIPS_PER_INTERVAL
                for ship in range(SHIPS_PER_INTERVAL):
                    shipped = datagrams[ship * per_ship : (ship + 1) * per_ship]
                    for index, (worker, _) in enumerate(workers):
                        worker.feed_many(shipped[index :: len(workers)])
                    t0 = time.perf_counter()  # the last round of shipments is the flush's collect
                    for worker, slot in workers:
                        shipment = pickle.loads(pickle.dumps(worker.take_shipment(), protocol=5))
                        aggregator.merge(slot.partial(shipment))
            else:
                for datagram in datagrams:
                    preagg.feed(datagram)
                t0 = time.perf_counter()
                aggregator.merge(preagg.take())
            t1 = time.perf_counter()
            snapshot = aggregator.take_snapshot(stamp + 10 * round_, 10.0)
            t2 = time.perf_counter()
            c2 = time.process_time()
            batch = tagger.build(snapshot)
            c3 = time.process_time()
            t3 = time.perf_counter()
            tsdb.write(batch)
            t4 = time.perf_counter()
            gc.collect(1)
            gc.freeze()
            print(
                f"{round_:5d} {t1 - t0:7.2f}s {t2 - t1:8.2f}s {t3 - t2:6.2f}s ({c3 - c2:.2f}s) "
                f"{t4 - t3:6.2f}s "
                f"{len(batch.names):7,d}{'  (every series new)' if round_ == 0 else ''}"
            )
            del batch, snapshot
        tsdb.close()


if __name__ == "__main__":
    main()
