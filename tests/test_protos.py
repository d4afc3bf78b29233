"""The checked-in stubs must be exactly what `make protos` generates from protos/: the services' in tierwise/v1,
the client package's in clients/python/tierwise_client/v1."""
import subprocess
import sys
from pathlib import Path

from tierwise.protogen import CLIENT_ROOT, ROOT, generate, generate_client


def assert_same(fresh: list[Path], checked_in: Path, skip: set[str]) -> None:
    assert fresh, "no .proto files found"
    names = {p.name for p in fresh}
    assert names == {p.name for p in checked_in.iterdir() if p.suffix in (".py", ".pyi") and p.name not in skip}, \
        f"generated file set differs from {checked_in.relative_to(ROOT)}: run `make protos`"
    for path in fresh:
        assert path.read_text() == (checked_in / path.name).read_text(), f"{path.name} is stale: run `make protos`"


def test_generated_stubs_match_protos(tmp_path: Path):
    assert_same(generate(tmp_path), ROOT / "tierwise" / "v1", {"__init__.py"})


def test_client_package_stubs_match_protos(tmp_path: Path):
    assert_same(generate_client(tmp_path), CLIENT_ROOT / "tierwise_client" / "v1", set())


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_server_and_client_stubs_load_in_one_process():
    assert run_python("""
from tierwise.v1 import router_pb2 as server
from tierwise_client.v1 import router_pb2 as client
wire = client.RouteResponse(tier=2, model="m", probabilities=[0.5]).SerializeToString()
decoded = server.RouteResponse.FromString(wire)
print(decoded.tier, decoded.model, client.DESCRIPTOR.pool is server.DESCRIPTOR.pool)
""") == "2 m False"


def test_client_stubs_load_beside_another_version_of_the_server_stubs():
    """Both name their file tierwise/v1/router.proto. The default pool refuses a second, different file of one
    name; the client's stubs sit in a pool of their own, so a server of another version does not stop them."""
    assert run_python("""
from google.protobuf import descriptor_pb2, descriptor_pool
other = descriptor_pb2.FileDescriptorProto(name="tierwise/v1/router.proto", package="tierwise.v1", syntax="proto3")
other.message_type.add(name="RouteRequest").field.add(name="query", number=1, type=9, label=1)
descriptor_pool.Default().Add(other)
try:
    descriptor_pool.Default().AddSerializedFile(descriptor_pb2.FileDescriptorProto(
        name="tierwise/v1/router.proto", package="tierwise.v1", syntax="proto3").SerializeToString())
    print("default pool took a second file")
except TypeError:
    pass
from tierwise_client import RouteResponse
print(RouteResponse(tier=3).tier)
""") == "3"
