"""EAGLE-3 features on the wire: float16 rows pass as they are; int8 rows with a scale per block
of 64 values come back within half a step of each block's own range, in about half the bytes,
across the wire format and into the drafter's history."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.speculation import feature_codec
from tandem.speculation.protocol import WIRE_TYPES, DraftItem
from tandem.speculation.wire import Codec, Kind

pytestmark = pytest.mark.timeout(60)


def residual_rows(n: int = 12) -> np.ndarray:
    """Rows like a target's: three layers of very different scale, a few outlier channels."""
    rng = np.random.default_rng(0)
    layers = [rng.normal(0, scale, (n, 576)) for scale in (0.05, 1.0, 8.0)]
    layers[2][:, 7] = 400.0  # a massive activation
    return np.concatenate(layers, -1).astype(np.float16)


def test_float16_rows_pass_unchanged():
    rows = residual_rows()
    values, scales = feature_codec.encode(rows, "float16")
    assert values is rows and scales is None
    assert feature_codec.decode(values, scales) is rows
    assert feature_codec.encode(None, "int8") == (None, None)


def test_int8_blocks_keep_each_blocks_range_in_half_the_bytes():
    rows = residual_rows()
    values, scales = feature_codec.encode(rows, "int8")
    assert values.dtype == np.int8 and scales.shape == (12, 1728 // 64)
    assert (values.nbytes + scales.nbytes) / rows.nbytes < 0.52
    back = feature_codec.decode(values, scales).astype(np.float32)
    blocks = rows.astype(np.float32).reshape(12, -1, 64)
    step = np.abs(blocks).max(-1, keepdims=True) / 127
    error = np.abs(back.reshape(12, -1, 64) - blocks)
    # half a step, plus the float16 rounding of the scale (relative) and of the value
    assert (error <= step * 0.6 + np.abs(blocks) * 1e-3).all()
    # the smallest layer keeps its shape although another holds a 400
    small = slice(0, 576)
    assert (
        np.corrcoef(back[:, small].ravel(), rows[:, small].astype(np.float32).ravel())[0, 1] > 0.999
    )


def test_int8_rows_cross_the_wire_and_reach_the_history_as_float16():
    from tandem.speculation.drafter import Drafter

    rows = residual_rows(3)
    values, scales = feature_codec.encode(rows, "int8")
    item = DraftItem("r", 0, (1, 2, 3), 0, "eagle", features=values, feature_scales=scales)
    codec = Codec(WIRE_TYPES)
    _, _, (decoded,) = codec.decode(codec.encode(Kind.DRAFT, 1, [item]))
    assert decoded.feature_scales is not None and decoded.features.dtype == np.int8
    drafter = Drafter({}, max_requests=8)
    drafter.draft([decoded])
    ((start, kept),) = drafter.histories["r"].features
    assert start == 0 and kept.dtype == np.float16
    np.testing.assert_array_equal(kept, feature_codec.decode(values, scales))
