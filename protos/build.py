"""Regenerate the Python stubs from the .proto files: `python -m tandem.protos.build`.

protoc derives import paths from file paths, so the .proto files are compiled from a temporary
tree where they sit at tandem/protos/; the stubs then import `tandem.protos.x_pb2`, never a bare
top-level module. tests/test_protos.py fails when the committed stubs drift from the .proto files.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

PROTOS_DIR = Path(__file__).resolve().parent
_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto file here into out_dir; returns the files written."""
    from grpc_tools import protoc

    protos = sorted(PROTOS_DIR.glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        pkg = Path(tmp) / "tandem" / "protos"
        pkg.mkdir(parents=True)
        for proto in protos:
            shutil.copy(proto, pkg / proto.name)
        args = ["protoc", f"-I{tmp}", f"-I{Path(protoc.__file__).parent / '_proto'}"]
        args += [f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}"]
        args += [str(pkg / p.name) for p in protos]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed on " + ", ".join(p.name for p in protos))
        written = []
        for f in sorted(pkg.iterdir()):
            if f.name.endswith(_SUFFIXES):
                shutil.copy(f, out_dir / f.name)
                written.append(out_dir / f.name)
        return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTOS_DIR):
        print(path)
