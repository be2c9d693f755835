"""The engine arguments tandem gives vLLM for a target (tandem.plugins.engine_setup): what a
feature mode (EAGLE-3) adds, and the compilation settings it refuses."""

from __future__ import annotations

import pytest

from tandem.plugins.engine_setup import engine_args, piecewise_graphs
from tandem.plugins.proposer import FEATURE_LAYERS
from tandem.speculation.settings import SpeculationConfig


def test_features_are_named_to_the_proposer_and_keep_compilation(tmp_path):
    user = {"dtype": "float32", "hf_overrides": {"rope_theta": 1.0}}
    args = engine_args(tmp_path, user, SpeculationConfig(), (2, 15, 27))
    assert args["hf_overrides"] == {"rope_theta": 1.0, FEATURE_LAYERS: (2, 15, 27)}
    assert args["compilation_config"] == {"cudagraph_mode": "PIECEWISE"}
    assert "enforce_eager" not in args and user == {
        "dtype": "float32",
        "hf_overrides": {"rope_theta": 1.0},
    }
    eager = engine_args(tmp_path, {"enforce_eager": True}, SpeculationConfig(), (2,))
    assert "compilation_config" not in eager  # nothing is compiled or captured
    plain = engine_args(tmp_path, {}, SpeculationConfig())
    assert "hf_overrides" not in plain and "compilation_config" not in plain


def test_graph_modes_that_skip_the_tap_are_refused():
    assert piecewise_graphs({"mode": 3, "cudagraph_mode": "none"}) == {
        "mode": 3,
        "cudagraph_mode": "NONE",
    }
    for mode in ("FULL", "full_and_piecewise", "FULL_DECODE_ONLY"):
        with pytest.raises(ValueError, match="compilation_config.cudagraph_mode"):
            piecewise_graphs({"cudagraph_mode": mode})
    with pytest.raises(ValueError, match="give a mapping"):
        piecewise_graphs(3)
