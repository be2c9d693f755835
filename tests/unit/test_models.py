"""Model preparation from the GGUF shipped on PyPI, and model lookup."""

import subprocess
import sys

import pytest

from tandem.models import DEFAULT_MODEL, ModelError, list_models, prepare_model, resolve_model

pytestmark = pytest.mark.timeout(600)  # loads models; slow on a loaded machine


def test_prepare_from_gguf_then_idempotent(tmp_path):
    folder = prepare_model(DEFAULT_MODEL, tmp_path)
    assert (folder / "model.safetensors").stat().st_size > 400e6  # fp32, de-quantised
    assert (folder / "tokenizer.json").is_file()
    assert "im_start" in (folder / "chat_template.jinja").read_text()
    config = (folder / "config.json").read_text()
    assert "quantization_config" not in config and '"float32"' in config
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert prepare_model(DEFAULT_MODEL, tmp_path) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not rewritten
    assert [m.name for m in list_models(tmp_path)] == [DEFAULT_MODEL]
    assert not list(tmp_path.glob(".*partial"))


def test_resolve_accepts_any_hf_folder(model_path, tmp_path):
    assert resolve_model(str(model_path), tmp_path) == model_path


def test_resolve_explains_unknown_and_unprepared(tmp_path):
    with pytest.raises(ModelError, match="neither a Hugging Face folder"):
        resolve_model("no-such-model", tmp_path)
    with pytest.raises(ModelError, match="tandem models prepare"):
        resolve_model(DEFAULT_MODEL, tmp_path, prepare=False)


def test_models_list_cli(model_path):
    run = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "models", "list"] + ["--dir", str(model_path.parent)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert DEFAULT_MODEL in run.stdout and "MiB" in run.stdout


def test_derive_draft_cli(model_path, tmp_path):
    def derive(layers):
        return subprocess.run(
            [sys.executable, "-m", "tandem.cli", "models", "derive-draft"]
            + ["--layers", str(layers), "--target", str(model_path), "--dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
        )

    run = derive(3)
    assert run.returncode == 0, run.stderr
    folder = tmp_path / f"{model_path.name}-first3"
    assert run.stdout.strip().endswith(str(folder))
    assert '"num_hidden_layers": 3' in (folder / "config.json").read_text()
    bad = derive(30)
    assert bad.returncode == 2 and "--layers must be between 1 and 29" in bad.stderr


def test_store_copies_from_its_source_once_per_node(model_path, tmp_path):
    """models.source: a node copies what it lacks into its own folder (never a partial copy),
    once; a draft is fetched when the source has it, else derived on the node."""
    import threading

    from tandem.models import ModelStore

    source = tmp_path / "source"
    source.mkdir()
    (source / DEFAULT_MODEL).symlink_to(model_path, target_is_directory=True)
    store = ModelStore(tmp_path / "node", str(source))
    found = []
    threads = [threading.Thread(target=lambda: found.append(store.resolve(DEFAULT_MODEL)))]
    threads.append(threading.Thread(target=lambda: found.append(store.resolve(DEFAULT_MODEL))))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found == [tmp_path / "node" / DEFAULT_MODEL] * 2
    assert (found[0] / "model.safetensors").stat().st_size > 400e6
    assert not (found[0] / "model.safetensors").is_symlink()
    assert not list((tmp_path / "node").glob(".*partial"))
    draft = store.draft_for(DEFAULT_MODEL, None, 2)  # not in the source: derived here
    assert draft == tmp_path / "node" / f"{DEFAULT_MODEL}-first2"
    assert '"num_hidden_layers": 2' in (draft / "config.json").read_text()
    with pytest.raises(ModelError, match="no Hugging Face folder"):
        store.resolve("missing-model")
