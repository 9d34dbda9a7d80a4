"""The commented descriptors reflection serves are the embedded ones plus their comments."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool

import loadwarden.v1.admin_pb2
import loadwarden.v1.backend_sim_pb2
import loadwarden.v1.common_pb2
import loadwarden.v1.decision_pb2  # noqa: F401 - registers the contract's files in the default pool
from loadwarden.server.rpc.reflection import commented_files


def test_every_contract_file_has_a_commented_twin_equal_but_for_its_comments() -> None:
    files = commented_files()
    assert sorted(files) == [
        "loadwarden/v1/admin.proto",
        "loadwarden/v1/backend_sim.proto",
        "loadwarden/v1/common.proto",
        "loadwarden/v1/decision.proto",
        "loadwarden/v1/planning.proto",
    ]
    for name, commented in files.items():
        embedded = descriptor_pb2.FileDescriptorProto()
        descriptor_pool.Default().FindFileByName(name).CopyToProto(embedded)
        bare = descriptor_pb2.FileDescriptorProto()
        bare.CopyFrom(commented)
        bare.ClearField("source_code_info")
        assert bare == embedded, name
        comments = [loc.leading_comments for loc in commented.source_code_info.location if loc.leading_comments]
        assert len(comments) >= 10, name
