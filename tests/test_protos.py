"""The checked-in stubs must be exactly what `make protos` generates from protos/."""
from pathlib import Path

from tierwise.protogen import ROOT, generate


def test_generated_stubs_match_protos(tmp_path: Path):
    fresh = generate(tmp_path)
    checked_in = ROOT / "tierwise" / "v1"
    assert fresh, "no .proto files found"
    names = {p.name for p in fresh}
    assert names == {p.name for p in checked_in.iterdir() if p.suffix in (".py", ".pyi") and p.name != "__init__.py"}, \
        "generated file set differs: run `make protos`"
    for path in fresh:
        assert path.read_text() == (checked_in / path.name).read_text(), f"{path.name} is stale: run `make protos`"
