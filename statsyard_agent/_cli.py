"""``statsyard-agent``: run the agent, query its data, check a config, inspect storage."""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from . import __version__
from ._config import EXAMPLE_CONFIG, AgentConfig, load_config
from ._envconfig import load_layered_config
from ._exceptions import ConfigError, QueryError, StorageError

EXIT_USAGE = 2

_DESCRIPTION = """\
A StatsD / DogStatsD metrics agent. Send it StatsD lines over UDP; it aggregates them every flush
interval into Etsy-statsd-style series (stats.counters.NAME.count, stats.timers.NAME.mean_90, ...),
writes them to a local rolled-up time-series directory, and exposes its own health on HTTP
(/metrics for Prometheus, /healthz).

With no command it runs the agent on the embedded defaults: UDP 127.0.0.1:8125, HTTP 127.0.0.1:8126,
flush every 10 s, data in ./statsyard-data. Flags override STATSYARD_* environment variables
(STATSYARD_FLUSH_INTERVAL=5, STATSYARD_STORAGE_RETENTION=...), which override the config file,
which overrides defaults.
"""

_EPILOG = """\
commands:
  (none) | run          run the agent (the flags above)
  query PATTERN         read series from a data directory (works while the agent runs)
  check-config FILE     validate a config file; exit 0 if good, 2 naming the bad key if not
  example-config        print a commented config file with every key and its default
  storage stats         series, partitions, bytes per tier, bytes per point
  storage verify        check every checksum; exit 0 only when all hold

examples:
  statsyard-agent --udp 0.0.0.0:8125 --flush-interval 10 --percentiles 90,99
  echo "deploys:1|c|#env:prod" | nc -u -w0 127.0.0.1 8125
  statsyard-agent query 'stats.counters.*.count' --from -1h --format table
  statsyard-agent query 'stats.timers.api.{mean,upper_90}' --tag env=prod --format json
  statsyard-agent --forward remote-write+http://vm:8428/api/v1/write --forward graphite://carbon:2003

Run 'statsyard-agent COMMAND --help' for a command's own flags.
"""


def _run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="TOML config file (see 'statsyard-agent example-config')")
    parser.add_argument("--udp", metavar="HOST:PORT",
                        help="StatsD UDP listen address; '' disables; port 0 picks a free port "
                             "(default 127.0.0.1:8125)")
    parser.add_argument("--http", metavar="HOST:PORT",
                        help="HTTP address for /metrics and /healthz; '' disables "
                             "(default 127.0.0.1:8126)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="data directory (default ./statsyard-data)")
    parser.add_argument("--flush-interval", type=int, metavar="SECONDS",
                        help="aggregation interval in whole seconds (default 10)")
    parser.add_argument("--percentiles", metavar="LIST",
                        help="timer percentiles, comma-separated, e.g. 90,99 (default 90)")
    parser.add_argument("--max-series", type=int, metavar="N",
                        help="cardinality guard: refuse new series beyond N (default 100000)")
    parser.add_argument("--retention", metavar="TIERS",
                        help="storage tiers step:keep,... (default 10s:7d,1m:90d,1h:2y)")
    parser.add_argument("--gauge-sign", choices=("delta", "set"),
                        help="meaning of g:+N / g:-N: 'delta' adds (Etsy, default), 'set' sets "
                             "(what DogStatsD clients mean)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        help="log verbosity (default info)")
    parser.add_argument("--unix", metavar="PATH",
                        help="also listen on a Unix datagram socket at PATH (DogStatsD style); "
                             "'' disables (default off)")
    parser.add_argument("--unix-mode", metavar="MODE",
                        help="permissions of the Unix socket file, octal (default 0660)")
    parser.add_argument("--origin-detection", action=argparse.BooleanOptionalAction, default=None,
                        help="tag Unix-socket series with the sender's process, pod and container "
                             "(default on)")
    parser.add_argument("--tags", metavar="LIST",
                        help="tags for every series, comma-separated, e.g. env:prod,team:core")
    parser.add_argument("--tag-cardinality", choices=("low", "orchestrator", "high"),
                        help="highest agent-added tag level: low, orchestrator (+ pod name/uid), "
                             "high (+ container id) (default low)")
    parser.add_argument("--forward", action="append", metavar="URL",
                        help="also send the series upstream (repeatable; adds to the config's "
                             "[[forward]] sinks): graphite://HOST:PORT, "
                             "remote-write+http://HOST:PORT/api/v1/write, or a StatsD relay "
                             "statsd://HOST:PORT,HOST:PORT (see docs/scale-out.md)")
    parser.add_argument("--ingest-workers", type=int, metavar="N",
                        help="UDP receive worker processes (SO_REUSEPORT), each parsing and "
                             "pre-aggregating on its own core; 0 receives on the event loop "
                             "(default 2)")
    parser.add_argument("--udp-rcvbuf", type=int, metavar="BYTES",
                        help="SO_RCVBUF to ask for on each UDP socket; the kernel caps it at "
                             "net.core.rmem_max (granted size logged and exported; default 8388608)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="statsyard-agent", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _run_flags(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the agent (the default)",
                              description="Run the agent.")
    _run_flags(run)

    query = commands.add_parser(
        "query", help="read series from a data directory",
        description="Read series matching a Graphite glob from a data directory. Safe while the "
                    "agent runs. The finest tier that covers the range is used.",
        epilog="PATTERN is a Graphite glob: '*', '?', '[a-z]', '{a,b}' match within one "
               "dot-separated node. Append ';k=v' or use --tag to filter on tags. Times: 'now', "
               "unix seconds, or relative like -30s, -10min, -1h, -7d.",
    )
    query.add_argument("pattern", metavar="PATTERN")
    query.add_argument("--from", dest="start", default="-1h", metavar="TIME",
                       help="start of the range (default -1h)")
    query.add_argument("--until", dest="end", default="now", metavar="TIME",
                       help="end of the range (default now)")
    query.add_argument("--data-dir", default="statsyard-data", type=Path, metavar="DIR",
                       help="data directory (default ./statsyard-data)")
    query.add_argument("--format", choices=("table", "json", "csv"), default="table",
                       help="output format; json is Graphite's render shape (default table)")
    query.add_argument("--tag", action="append", default=[], metavar="K=V",
                       help="keep only series with this tag (repeatable)")
    query.add_argument("--max-points", type=int, metavar="N",
                       help="consolidate each series to at most N points (by its own rollup)")

    check = commands.add_parser("check-config", help="validate a config file",
                                description="Validate a TOML config file. Exit 0 when it is "
                                            "valid, 2 with the offending key named when not.")
    check.add_argument("file", type=Path, metavar="FILE")

    commands.add_parser("example-config", help="print a commented config with every default",
                        description="Print a commented TOML config with every key.")

    storage = commands.add_parser("storage", help="inspect a data directory",
                                  description="Inspect a data directory (safe while the agent "
                                              "runs).")
    storage_commands = storage.add_subparsers(dest="storage_command", metavar="ACTION",
                                              required=True)
    stats = storage_commands.add_parser("stats", help="sizes, series, bytes per point",
                                        description="Report series, partitions, bytes per tier "
                                                    "and bytes per point.")
    stats.add_argument("--data-dir", default="statsyard-data", type=Path, metavar="DIR")
    stats.add_argument("--json", action="store_true", help="print JSON")
    verify = storage_commands.add_parser("verify", help="check every checksum",
                                         description="Check every checksum; exit 0 only when "
                                                     "all hold, 1 listing the problems.")
    verify.add_argument("--data-dir", default="statsyard-data", type=Path, metavar="DIR")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    mapping = {
        "udp": "udp", "http": "http", "data_dir": "data_dir", "flush_interval": "flush_interval",
        "percentiles": "percentiles", "max_series": "max_series", "gauge_sign": "gauge_sign",
        "log_level": "log_level", "retention": "storage.retention",
        "unix": "unix", "unix_mode": "unix_mode", "origin_detection": "origin_detection",
        "tags": "tags", "tag_cardinality": "tag_cardinality", "forward": "forward",
        "ingest_workers": "ingest.workers", "udp_rcvbuf": "udp_rcvbuf",
    }
    return {key: getattr(args, attr) for attr, key in mapping.items()
            if getattr(args, attr, None) is not None}


def _join_relative_times(argv: Sequence[str]) -> list[str]:
    """Let ``--from -1h`` work: argparse would take ``-1h`` for an option, so glue it on."""
    joined: list[str] = []
    items = iter(argv)
    for item in items:
        if item in ("--from", "--until"):
            value = next(items, None)
            joined.append(item if value is None else f"{item}={value}")
        else:
            joined.append(item)
    return joined


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_join_relative_times(sys.argv[1:] if argv is None else argv))
    command = args.command or "run"
    try:
        if command == "run":
            config = load_layered_config(args.config, _overrides(args), os.environ)
            return _run(config)
        if command == "check-config":
            load_config(args.file, {})
            print(f"{args.file}: ok")
            return 0
        if command == "example-config":
            sys.stdout.write(EXAMPLE_CONFIG)
            return 0
        if command == "query":
            return _query(args)
        if command == "storage":
            return _storage(args)
    except ConfigError as exc:
        print(f"statsyard-agent: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (StorageError, QueryError) as exc:
        print(f"statsyard-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {command}")


def _run(config: AgentConfig) -> int:
    from ._app import run_agent  # imported late: 'query' and 'storage' need no trio machinery
    from ._faults import FaultInjector

    logging.basicConfig(
        level=config.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return trio.run(lambda: run_agent(config, faults=FaultInjector.from_env(),
                                      handle_signals=True))


def _parse_tags(items: list[str]) -> dict[str, str]:
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise QueryError(f"--tag expects K=V, got {item!r}")
        tags[key] = value
    return tags


def _query(args: argparse.Namespace) -> int:
    from .storage import Reader, parse_time

    now = int(time.time())
    start = parse_time(args.start, now)
    end = parse_time(args.end, now)
    if end <= start:
        raise QueryError(f"--until ({args.end}) must be after --from ({args.start})")
    pattern, _, tag_part = args.pattern.partition(";")
    tags = _parse_tags([t for t in tag_part.split(";") if t]) | _parse_tags(args.tag)
    reader = Reader(args.data_dir)
    results = reader.query(pattern, start, end, tags=tags, max_points=args.max_points)
    out = sys.stdout
    if args.format == "json":
        json.dump([
            {"target": s.name, "tags": {"name": s.name, **s.tags},
             "datapoints": [[_json_value(v), s.start + i * s.step]
                            for i, v in enumerate(s.values.tolist())]}
            for s in results
        ], out)
        out.write("\n")
    elif args.format == "csv":
        writer = csv.writer(out, lineterminator="\n")
        for s in results:
            target = s.name + "".join(f";{k}={v}" for k, v in sorted(s.tags.items()))
            for i, v in enumerate(s.values.tolist()):
                stamp = datetime.datetime.fromtimestamp(s.start + i * s.step, datetime.UTC)
                writer.writerow([target, stamp.strftime("%Y-%m-%d %H:%M:%S"),
                                 "" if math.isnan(v) else _number_text(v)])
    else:
        out.write(_table(results))
    if not results:
        print(f"no series match {args.pattern!r} in {args.data_dir}", file=sys.stderr)
    return 0


def _json_value(value: float) -> float | None:
    return None if math.isnan(value) else value


def _number_text(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _table(results: Sequence[Any]) -> str:
    buf = io.StringIO()
    for s in results:
        tag_text = ",".join(f"{k}={v}" for k, v in sorted(s.tags.items()))
        buf.write(f"{s.name}{' {' + tag_text + '}' if tag_text else ''}  (step {s.step}s)\n")
        for i, v in enumerate(s.values.tolist()):
            if math.isnan(v):
                continue
            stamp = datetime.datetime.fromtimestamp(s.start + i * s.step, datetime.UTC)
            buf.write(f"  {stamp:%Y-%m-%dT%H:%M:%SZ}  {_number_text(v)}\n")
    return buf.getvalue()


def _progress(label: str) -> Callable[[int, int], None]:
    """A one-line progress display on a terminal; silent when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return lambda done, total: None

    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def _storage(args: argparse.Namespace) -> int:
    from .storage import storage_stats, verify_storage

    if args.storage_command == "stats":
        stats = storage_stats(args.data_dir, progress=_progress("reading"))
        if args.json:
            json.dump(stats, sys.stdout, indent=1, sort_keys=True)
            sys.stdout.write("\n")
        else:
            for key, value in sorted(stats.items()):
                print(f"{key}: {json.dumps(value, sort_keys=True)}")
        return 0
    problems = verify_storage(args.data_dir, progress=_progress("verifying"))
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) found in {args.data_dir}", file=sys.stderr)
        return 1
    print(f"{args.data_dir}: all checksums hold")
    return 0
