"""The committed stubs must be exactly what the .proto files generate."""

import pytest

from tandem.protos.build import PROTOS_DIR, generate

pytestmark = pytest.mark.timeout(120)


def test_stubs_match_proto_files(tmp_path):
    written = generate(tmp_path)
    assert {p.name for p in written} == {"tandem_pb2.py", "tandem_pb2.pyi", "tandem_pb2_grpc.py"}
    for fresh in written:
        committed = PROTOS_DIR / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"{committed.name} is stale: run `make protos` and commit the result"
        )


def test_stubs_import_from_package():
    from tandem.protos import tandem_pb2_grpc

    source = (PROTOS_DIR / "tandem_pb2_grpc.py").read_text()
    assert "from tandem.protos import tandem_pb2" in source
    assert tandem_pb2_grpc.TandemStub is not None
