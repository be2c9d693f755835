"""`tandem draft` with input it cannot use: one line naming the problem and exit status 2, as the
other commands do for a bad config, never a traceback."""

import pytest

from tandem.cli import main

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--out", "{tmp}/head"],
        ["eval", "--head", "{tmp}"],
        ["trim", "--head", "{tmp}", "--sizes", "1024", "--out", "{tmp}/trimmed"],
    ],
)
def test_a_folder_without_data_is_named(command, tmp_path, capsys):
    argv = ["draft", *[a.format(tmp=tmp_path) for a in command], "--data", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a data folder" in err and str(tmp_path) in err
    assert "Traceback" not in err


def test_a_recipe_without_soft_labels_is_refused_before_any_work(tmp_path, capsys):
    assert main(["draft", "data", "--out", str(tmp_path / "data"), "--top-k", "0"]) == 2
    assert "top_k must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
