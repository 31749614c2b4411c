"""pa.Quantization: the defaults per kind and every bad setting refused in words before anything is sent
(docs/quantization.md, "Using it")."""

from __future__ import annotations

import numpy as np
import pytest

import pccl_arrays as pa
from pccl_arrays import errors


def test_defaults_follow_the_kind():
    assert pa.Quantization().block == 1024 and pa.Quantization("zeropoint").block == 1024
    four = pa.Quantization("minmax4")
    assert four.block == 512 and four.reduce == "direct" and not four.rotate
    assert pa.Quantization("uint4", block=2048).block == 2048  # an alias, and an explicit block stays
    assert pa.Quantization("minmax4", rotate=True, seed=3).rotate_seed == 3
    assert pa.Quantization("minmax4", seed=3).rotate_seed is None
    assert pa.Quantization.of("minmax4") == pa.Quantization("minmax4")


@pytest.mark.parametrize("kwargs,words", [
    ({"kind": "int4"}, "quantization kind must be one of"),
    ({"block": 100}, "multiple of 64"),
    ({"kind": "minmax4", "block": 192, "rotate": True}, "power-of-two block of at most 4096, not 192"),
    ({"block": 8192, "rotate": True}, "power-of-two block of at most 4096, not 8192"),
    ({"rotate": 1}, "rotate must be True or False"),
    ({"reduce": "tree"}, "reduce must be one of direct, ring"),
    ({"rounding": "up"}, "rounding must be"),
    ({"seed": -1}, "seed must be an int"),
    ({"path": "gpu"}, "path must be one of"),
])
def test_bad_settings_are_refused_in_words(kwargs, words):
    with pytest.raises(errors.InvalidArgumentError, match=words):
        pa.Quantization(**kwargs)


def test_quantization_of_integers_or_max_is_refused_before_anything_is_sent(master):
    with pa.Communicator(master.address) as c:
        with pytest.raises(errors.UnsupportedDTypeError, match="sum and avg of floating arrays"):
            c.all_reduce(np.ones(8, np.int32), quantization="minmax4")
        with pytest.raises(errors.UnsupportedDTypeError, match="not max of float32"):
            c.all_reduce(np.ones(8, np.float32), "max", quantization=pa.Quantization("minmax4", rotate=True))
        assert c.all_reduce(np.ones(8, np.float32)).tolist() == [1.0] * 8  # and the communicator goes on
