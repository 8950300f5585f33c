"""Prometheus remote-write 1.0 messages built with the `protobuf` package, for checking our
hand-written encoder against the reference implementation (test-only dependency).

The descriptor mirrors prometheus/prometheus ``prompb/remote.proto`` and ``types.proto`` (the
fields remote write 1.0 uses), built at runtime so no generated code is checked in.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _build() -> dict[str, Any]:
    file = descriptor_pb2.FileDescriptorProto(
        name="statsyard_test_prompb.proto", package="prometheus", syntax="proto3"
    )

    def message(name: str, fields: list[tuple[str, int, int, int, str]]) -> None:
        msg = file.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            field = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name

    opt, rep = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    message("Label", [("name", 1, _F.TYPE_STRING, opt, ""), ("value", 2, _F.TYPE_STRING, opt, "")])
    message("Sample", [("value", 1, _F.TYPE_DOUBLE, opt, ""), ("timestamp", 2, _F.TYPE_INT64, opt, "")])
    message(
        "TimeSeries",
        [
            ("labels", 1, _F.TYPE_MESSAGE, rep, ".prometheus.Label"),
            ("samples", 2, _F.TYPE_MESSAGE, rep, ".prometheus.Sample"),
        ],
    )
    message("WriteRequest", [("timeseries", 1, _F.TYPE_MESSAGE, rep, ".prometheus.TimeSeries")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"prometheus.{name}"))
        for name in ("Label", "Sample", "TimeSeries", "WriteRequest")
    }


_CLASSES = _build()
Label = _CLASSES["Label"]
Sample = _CLASSES["Sample"]
TimeSeries = _CLASSES["TimeSeries"]
WriteRequest = _CLASSES["WriteRequest"]


def decode(body: bytes) -> list[tuple[tuple[tuple[str, str], ...], list[tuple[float, int]]]]:
    """A serialized WriteRequest as ``[(labels, [(value, timestamp_ms), ...]), ...]``."""
    request = WriteRequest()
    request.ParseFromString(body)
    return [
        (
            tuple((label.name, label.value) for label in ts.labels),
            [(sample.value, sample.timestamp) for sample in ts.samples],
        )
        for ts in request.timeseries
    ]
