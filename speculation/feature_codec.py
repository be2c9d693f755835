"""How the target's EAGLE-3 features travel to the drafter: float16 rows, or 8-bit rows with a
scale per block of 64 values (as GGUF's Q8_0 does with 32), about half the bytes.

Each row concatenates the residual stream of several target layers, whose magnitudes differ by
orders and carry a few outlier channels; one scale per row would round the small layers to
nothing, a scale per block keeps each block's own range (about 3% more bytes than the values).
The drafter turns rows back into float16 before the head reads them; what this costs in
acceptance is measured by `tandem draft eval --feature-encoding int8` (docs/speculation.md).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

FeatureEncoding = Literal["float16", "int8"]
BLOCK = 64


def encode(rows: Any, encoding: FeatureEncoding) -> tuple[Any, Any]:
    """(values, scales) to send for float16 `rows` [n, width]: the rows themselves and None, or
    int8 values [n, width] and float16 scales [n, blocks]."""
    if encoding == "float16" or rows is None:
        return rows, None
    n, width = rows.shape
    block = BLOCK if width % BLOCK == 0 else width
    blocks = rows.astype(np.float32).reshape(n, width // block, block)
    scales = np.abs(blocks).max(-1) / 127.0
    safe = np.where(scales > 0, scales, 1.0)[..., None]
    values = np.clip(np.rint(blocks / safe), -127, 127).astype(np.int8)
    return values.reshape(n, width), scales.astype(np.float16)


def decode(values: Any, scales: Any) -> Any:
    """The float16 rows `encode` was given (to within a block's rounding); rows sent as float16
    come back as they are."""
    if scales is None or values is None:
        return values
    n, width = values.shape
    blocks = values.reshape(n, scales.shape[1], -1).astype(np.float32)
    return (blocks * scales.astype(np.float32)[..., None]).reshape(n, width).astype(np.float16)
