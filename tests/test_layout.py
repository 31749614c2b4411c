"""The core's folders are layers (docs/design.md): every `#include "layer/file.hpp"` points to the same layer or to
one the including layer may use, so master and peer never include each other and nothing below includes above.
"""
import re
from pathlib import Path

import pytest

CPP = Path(__file__).resolve().parents[1] / "cpp"

# What each layer may include besides itself (docs/design.md draws the same picture).
MAY_USE = {
    "base": set(),
    "wire": {"base"},
    "crypto": {"base"},
    "kernels": {"base"},
    "planning": {"base", "wire"},
    "transport": {"base", "wire", "crypto"},
    "master": {"base", "wire", "crypto", "kernels", "planning", "transport"},
    "peer": {"base", "wire", "crypto", "kernels", "planning", "transport"},
}
MAY_USE["python"] = set(MAY_USE) | {"master", "peer"}
MAY_USE["tests"] = set(MAY_USE) - {"python"}

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def sources():
    if not CPP.is_dir():
        pytest.skip("the C++ sources are not beside the tests (an installed package)")
    return sorted(p for p in CPP.rglob("*") if p.suffix in (".cpp", ".hpp"))


def test_every_source_lives_in_a_layer():
    stray = [str(p.relative_to(CPP)) for p in sources() if p.parent.relative_to(CPP).parts[:1] not in
             [(layer,) for layer in MAY_USE]]
    assert not stray, f"files outside the layer folders: {stray}"


def violations(root):
    """(file, include) pairs under root that break the layer order, and includes not written as layer/file."""
    wrong = []
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".cpp", ".hpp")):
        layer = path.relative_to(root).parts[0]
        for target in INCLUDE.findall(path.read_text()):
            parts = target.split("/")
            if len(parts) != 2 or not (root / target).is_file() or (parts[0] != layer and parts[0] not in MAY_USE[layer]):
                wrong.append((str(path.relative_to(root)), target))
    return wrong


def test_includes_point_down_the_layers():
    sources()
    assert violations(CPP) == []


def test_the_checker_refuses_upward_and_sideways_includes(tmp_path):
    for name, text in {"base/a.hpp": "", "peer/p.hpp": '#include "base/a.hpp"\n',
                       "master/m.cpp": '#include "peer/p.hpp"\n#include "base/a.hpp"\n',
                       "base/b.cpp": '#include "base/a.hpp"\n#include "wire/w.hpp"\n',
                       "kernels/k.cpp": '#include "a.hpp"\n'}.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "wire").mkdir()
    (tmp_path / "wire/w.hpp").write_text("")
    assert violations(tmp_path) == [("base/b.cpp", "wire/w.hpp"), ("kernels/k.cpp", "a.hpp"), ("master/m.cpp", "peer/p.hpp")]
