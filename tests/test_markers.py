from aml_magics.markers import Endpoint, endpoint_from, parse_marker


def test_marker_anywhere_in_a_line():
    line = '2026-11-24T07:00:00Z [rank 3] AML_MAGICS_ENDPOINT {"host": "10.0.0.4", "port": 5679, "rank": 3}\n'
    marker = parse_marker(line)
    assert marker is not None and marker.kind == "ENDPOINT"
    assert endpoint_from(marker.data) == Endpoint("10.0.0.4", 5679, rank=3)


def test_non_markers_and_broken_json_are_ignored():
    assert parse_marker("ip_address: 10.0.0.4") is None
    assert parse_marker("AML_MAGICS_ENDPOINT {not json}") is None
    assert parse_marker("AML_MAGICS_ENDPOINT [1, 2]") is None
    assert parse_marker("aml_magics_endpoint {}") is None


def test_endpoint_validation():
    assert endpoint_from({"host": "h"}) is None
    assert endpoint_from({"host": "h", "port": "x"}) is None
    assert endpoint_from({"host": "h", "port": 0}) is None
    assert endpoint_from({"host": "", "port": 5}) is None
    full = endpoint_from({"host": "127.0.0.1", "port": 5678, "pid": 7, "cwd": "/app", "script": "/app/t.py"})
    assert full is not None and full.address == "127.0.0.1:5678" and full.cwd == "/app"
    assert full.moved_to("127.0.0.1", 40000).address == "127.0.0.1:40000"
    assert full.moved_to("127.0.0.1", 40000).cwd == "/app"
