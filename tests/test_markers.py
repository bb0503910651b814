"""The run protocol: only whole, authenticated marker lines move a run; the reader never dies."""

from __future__ import annotations

import json

from aml_magics.node.wire import marker_mac
from aml_magics.protocol import Endpoint, EndpointMarker, ExitMarker, MarkerReader

KEY = b"k" * 32


def signed(kind: str, data: dict, key: bytes = KEY) -> str:
    payload = json.dumps(data, sort_keys=True)
    return f"AML_MAGICS_{kind} {payload} {marker_mac(key, kind, payload)}"


def test_a_signed_whole_line_is_a_typed_marker():
    reader = MarkerReader(KEY)
    marker = reader.parse(signed("ENDPOINT", {"host": "10.0.0.4", "port": 5679, "rank": 3}) + "\n")
    assert isinstance(marker, EndpointMarker)
    assert marker.endpoint() == Endpoint("10.0.0.4", 5679, rank=3)
    tagged = reader.parse("[rank 2] " + signed("EXIT", {"code": 1}))
    assert isinstance(tagged, ExitMarker) and tagged.rank == 2 and tagged.code == 1


def test_forged_mid_line_and_malformed_markers_are_output():
    reader = MarkerReader(KEY)
    forged = [
        'AML_MAGICS_ENDPOINT {"host": "evil.example.com", "port": 4444}',  # no MAC
        signed("ENDPOINT", {"host": "evil.example.com", "port": 4444}, key=b"x" * 32),  # wrong key
        "processing row: x " + signed("ENDPOINT", {"host": "evil.example.com", "port": 4444}),  # mid-line
        signed("ENDPOINT", {"host": "h", "port": 1, "rank": "x"}),  # wrong field type
        signed("ENDPOINT", {"host": "h", "port": 10**40}),  # absurd number
        signed("NOPE", {}),  # unknown kind
        "AML_MAGICS_ENDPOINT {not json} " + "0" * 32,
        "AML_MAGICS_ENDPOINT [1, 2]",
    ]
    for line in forged:
        assert reader.parse(line) is None, line
        assert not reader.is_marker(line)
    assert reader.rejected == len(forged)
    assert reader.parse("ip_address: 10.0.0.4") is None  # not even a candidate
    assert reader.rejected == len(forged)


def test_endpoint_validation():
    assert EndpointMarker(host="h").endpoint() is None
    assert EndpointMarker(host="h", port=0).endpoint() is None
    assert EndpointMarker(host="", port=5).endpoint() is None
    full = EndpointMarker(host="127.0.0.1", port=5678, pid=7, cwd="/app", script="/app/t.py").endpoint()
    assert full is not None and full.address == "127.0.0.1:5678" and full.cwd == "/app"
    moved = full.moved_to("127.0.0.1", 40000)
    assert moved.address == "127.0.0.1:40000" and moved.cwd == "/app" and moved.node_address == "127.0.0.1:5678"
