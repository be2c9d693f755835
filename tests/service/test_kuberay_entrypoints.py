"""Each KubeRay manifest's containers run here the way KubeRay runs them, and the service answers
the health checks KubeRay and the manifest rely on.

KubeRay (ray-operator/controllers/ray/common/pod.go, at the vendored commit) builds
`$KUBERAY_GEN_RAY_START_CMD` from rayStartParams plus its own additions, `--block` always among
them, and runs a container through `/bin/bash -lc`: the manifest's args when it overwrites the
command, else `ulimit -n ...; <that command>`. Here every pod is a process session of its own
with its own model folder ($TANDEM_MODELS_DIR), so a model written on one "pod" is never seen by
another: each copies the default model (and the drafter pod its draft) from `models.source`.
What differs from a cluster, and why: ports are free ones on loopback (the machine is shared),
the ConfigMap's mount path is a temporary file, the pools are scaled to one target replica,
and the drafter's logical GPU is drafted on with torch on the CPU (this machine has no GPU).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.client import TandemClient
from tests.support.kuberay_rules import RAYCLUSTER, RAYSERVICES, documents
from tests.support.services import free_port

pytestmark = pytest.mark.slow

TOKEN = "kuberay-test-token"
BIN = Path(sys.executable).parent


def kuberay_start_command(group: dict[str, Any], head: bool, ports: dict[str, int]) -> str:
    """`$KUBERAY_GEN_RAY_START_CMD` as pod.go builds it (setMissingRayStartParams,
    generateRayStartCommand, convertParamMap): the group's rayStartParams, num-cpus and memory
    from the container's limits when absent, metrics-export-port and
    dashboard-agent-listen-port defaults, `block`; keys sorted; true booleans as bare flags."""
    params = dict(group.get("rayStartParams", {}))
    (container, *_) = group["template"]["spec"]["containers"]
    limits = container.get("resources", {}).get("limits", {})
    params.setdefault("num-cpus", str(limits.get("cpu", "")) or None)
    if "memory" in limits:
        params.setdefault("memory", str(_bytes(limits["memory"])))
    params.setdefault("metrics-export-port", str(ports["metrics"]))
    params.setdefault("dashboard-agent-listen-port", str(ports["agent"]))
    params["block"] = "true"
    # This machine is shared: loopback and free ports instead of the pod's defaults.
    params.update({"node-ip-address": "127.0.0.1", "metrics-export-port": str(ports["metrics"])})
    params["dashboard-agent-listen-port"] = str(ports["agent"])
    if head:
        params.update(
            {
                "dashboard-host": "127.0.0.1",
                "port": str(ports["gcs"]),
                "dashboard-port": str(ports["dashboard"]),
                "ray-client-server-port": str(free_port()),
            }
        )
    else:
        params["address"] = f"127.0.0.1:{ports['gcs']}"
    flags = "".join(
        f" --{k} " if v == "true" else f" --{k}={v} "
        for k, v in sorted(params.items())
        if v is not None
    )
    return ("ray start --head" if head else "ray start") + flags


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


class Pod:
    """One container run as KubeRay runs it: bash -lc with KubeRay's environment, in a process
    session of its own (killed whole at the end: Ray's daemons included). With `restart`, it is
    started again when it exits, as the kubelet restarts a failed container (`ray start` gives up
    when its raylet takes over 30 s to register, as on a busy machine)."""

    def __init__(
        self, name: str, args: str, env: dict[str, str], tmp: Path, restart: bool = False
    ) -> None:
        home = tmp / name / "home"  # the image's login profile: tandem and ray on PATH
        home.mkdir(parents=True)
        (home / ".bash_profile").write_text(f'export PATH="{BIN}:$PATH"\n')
        self.models = tmp / name / "models"
        self.log = (tmp / name / "log").open("w")
        self.args = args
        self.env = {**os.environ, **env, "HOME": str(home), "TANDEM_MODELS_DIR": str(self.models)}
        self.sessions: list[int] = []
        self.restarts = 5 if restart else 0
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        proc = subprocess.Popen(
            ["/bin/bash", "-lc", "--", self.args],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.sessions.append(proc.pid)  # start_new_session: the pod's processes share its id
        return proc

    def alive(self) -> bool:
        if self.proc.poll() is not None and self.restarts > 0:
            self.restarts -= 1
            self._kill_sessions()
            self.proc = self._start()
        return self.proc.poll() is None

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def terminate(self) -> None:
        """SIGTERM to the main process, as the kubelet sends it."""
        self.restarts = 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, deadline: float) -> None:
        """After terminate(): wait for the main process until `deadline` (time.monotonic()), then
        end the whole session."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        self._kill_sessions()
        self.log.close()

    def _kill_sessions(self) -> None:
        """Everything the container ran, as when a container's PID namespace goes away."""
        doomed = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getsid(process.pid) in self.sessions:
                    process.kill()
                    doomed.append(process)
        psutil.wait_procs(doomed, timeout=30)


def pod_env(ports: dict[str, int], start_command: str) -> dict[str, str]:
    """What KubeRay's setContainerEnvVars gives every Ray container that matters here."""
    return {
        "KUBERAY_GEN_RAY_START_CMD": start_command,
        "RAY_ADDRESS": f"127.0.0.1:{ports['gcs']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "TANDEM_TOKEN": TOKEN,
    }


def worker_args(start_command: str) -> str:
    """A worker container without a command of its own: KubeRay's generated one."""
    return f"ulimit -n ${{RAY_START_ULIMIT_OPEN_FILES:-65536}}; {start_command}"


@contextlib.contextmanager
def cluster(
    spec: dict[str, Any], head_args: str | None, tmp: Path
) -> Iterator[tuple[Pod, dict[str, int]]]:
    """The head pod (its manifest args, or KubeRay's default command) and one pod per worker
    group, all with KubeRay's start commands."""
    ports = {k: free_port() for k in ("gcs", "dashboard", "metrics", "agent")}
    head_command = kuberay_start_command(spec["headGroupSpec"], True, ports)
    pods: list[Pod] = []
    done = threading.Event()

    def kubelet() -> None:  # restarts failed containers
        while not done.wait(2):
            for pod in pods:
                pod.alive()

    threading.Thread(target=kubelet, daemon=True).start()
    try:
        head = Pod(
            "head",
            head_args or worker_args(head_command),
            pod_env(ports, head_command),
            tmp,
            restart=True,
        )
        pods.append(head)
        # KubeRay's workers wait for the head's GCS (its wait-gcs-ready init container).
        _wait(lambda: "Ray runtime started" in head.output(), 300, head)
        for group in spec["workerGroupSpecs"]:
            worker_ports = {**ports, "metrics": free_port(), "agent": free_port()}
            command = kuberay_start_command(group, False, worker_ports)
            env = pod_env(ports, command)
            worker = Pod(group["groupName"], worker_args(command), env, tmp, restart=True)
            pods.append(worker)
            # One node at a time: on one machine, raylets starting together can race for the
            # same random ports (pods have a network namespace each).
            _wait(lambda w=worker: "Ray runtime started" in w.output(), 300, worker)
        yield head, ports
        for pod in pods[1:]:  # workers stayed up (or were restarted, as by the kubelet)
            assert pod.alive(), pod.output()
    finally:
        done.set()
        delete(pods)


# When the test is over its cluster is deleted, every pod at once as Kubernetes does. What the
# pods do then is not what these tests check (the RayCluster test checks the head's SIGTERM
# itself, before this): a Ray node drains for up to RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S (30 s)
# on SIGTERM, and a head serving Serve takes all of it, so the pods get a short grace instead of
# the manifest's 30 s, then are killed whole.
TEARDOWN_GRACE_S = 5


def delete(pods: list[Pod]) -> None:
    for pod in pods:
        pod.terminate()
    deadline = time.monotonic() + TEARDOWN_GRACE_S
    for pod in pods:
        pod.stop(deadline)


def _wait(ready, timeout_s: float, pod: Pod):
    """Poll `ready` until it holds; each check is cheap (a log file, a health call), so poll
    often: every wait here ends a step that the next one waits on."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert pod.alive(), pod.output()
        with contextlib.suppress(Exception):
            result = ready()
            if result:
                return result
        time.sleep(0.5)
    raise TimeoutError(pod.output())


def scaled(config: dict[str, Any], model_source: Path) -> dict[str, Any]:
    """The manifest's tandem config, scaled to this machine (see the module docstring)."""
    config = json.loads(json.dumps(config))
    config["models"] = {"target": config["models"]["target"], "source": str(model_source)}
    config["target"]["replicas"] = 1
    config["speculation"]["drafters"]["device"] = "cpu"
    return config


def check_models_per_pod(tmp: Path, model: str) -> None:
    """Each pod fetched what it runs into its own folder; the drafter pod its draft too."""
    assert (tmp / "targets" / "models" / model / "config.json").is_file()
    assert (tmp / "drafters" / "models" / f"{model}-first4" / "config.json").is_file()


def grpc_health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


@pytest.mark.timeout(900)
def test_raycluster_head_starts_tandem_serve_despite_block(tmp_path, model_path):
    docs = documents(RAYCLUSTER)
    spec = docs["RayCluster"]["spec"]
    (head,) = spec["headGroupSpec"]["template"]["spec"]["containers"]
    config = scaled(yaml.safe_load(docs["ConfigMap"]["data"]["tandem.yaml"]), model_path.parent)
    port, http_port = free_port(), free_port()
    # Metrics off: a port picked minutes before the bind may be taken by then on a busy machine.
    config["server"].update(host="127.0.0.1", port=port, http_port=http_port, metrics_port=None)
    config_file = tmp_path / "tandem.yaml"
    config_file.write_text(yaml.safe_dump(config))
    assert head["command"] == ["/bin/bash", "-lc", "--"]
    (args,) = head["args"]
    args = args.replace("/etc/tandem/tandem.yaml", str(config_file))  # the ConfigMap mount
    with cluster(spec, args, tmp_path) as (pod, _):
        address = f"127.0.0.1:{port}"
        # The manifest's probes: readiness on tandem.v1.Tandem, liveness on the server.
        serving = health_pb2.HealthCheckResponse.SERVING
        _wait(lambda: grpc_health(address, "tandem.v1.Tandem") == serving, 600, pod)
        assert grpc_health(address, "") == serving
        with TandemClient(address, token=TOKEN, timeout=120) as client:
            result = client.generate("Name three colors.", temperature=0, max_tokens=8)
            assert result.usage.completion_tokens == 8
            assert client.model_info().replicas == 1
        # The OpenAI API beside gRPC (the manifest's `http` port), with the same token.
        openai_url = f"http://127.0.0.1:{http_port}/v1/models"
        assert httpx.get(openai_url, timeout=60).status_code == 401
        models = httpx.get(openai_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert models.json()["data"][0]["id"] == config["models"]["target"]
        check_models_per_pod(tmp_path, config["models"]["target"])
        assert (tmp_path / "head" / "models" / config["models"]["target"]).is_dir()  # tokenizer
        # SIGTERM reaches tandem serve (exec'd by the entrypoint), which drains and exits 0.
        pod.restarts = 0  # the pod is being deleted, not restarted
        pod.proc.send_signal(signal.SIGTERM)
        assert pod.proc.wait(120) == 0, pod.output()


@pytest.mark.timeout(900)
def test_rayservice_serves_after_kuberay_submits_its_serve_config(tmp_path, model_path):
    manifest = documents(RAYSERVICES[0])["RayService"]
    spec = manifest["spec"]["rayClusterConfig"]
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    http_port, grpc_port = free_port(), free_port()
    serve_config["http_options"].update(host="127.0.0.1", port=http_port)
    serve_config["grpc_options"]["port"] = grpc_port
    (app,) = serve_config["applications"]
    app["args"]["config"] = scaled(app["args"]["config"], model_path.parent)
    app["args"]["config"]["server"]["metrics_port"] = None  # see the RayCluster test
    with cluster(spec, None, tmp_path) as (pod, ports):
        dashboard = f"http://127.0.0.1:{ports['dashboard']}"
        # KubeRay's RayService controller: PUT the serve config, then watch the app's status.
        _wait(
            lambda: httpx.get(dashboard + "/api/gcs_healthz", timeout=5).text == "success", 120, pod
        )
        token = tmp_path / "head" / "home" / ".ray" / "auth_token"
        headers = {"Authorization": f"Bearer {token.read_text().strip()}"} if token.exists() else {}
        put = httpx.put(
            dashboard + "/api/serve/applications/", json=serve_config, headers=headers, timeout=60
        )
        assert put.status_code == 200, put.text

        def running():
            details = httpx.get(
                dashboard + "/api/serve/applications/?api_type=declarative",
                headers=headers,
                timeout=10,
            ).json()
            status = details["applications"]["tandem"]["status"]
            if status == "DEPLOY_FAILED":
                pytest.fail(details["applications"]["tandem"]["message"])
            return status == "RUNNING"

        _wait(running, 600, pod)
        # KubeRay's checks: the head's Serve proxy (the one proxy: HeadOnly), and the node probe
        # (KubeRay's on the head, the manifest's readiness probe on the workers).
        proxy = httpx.get(f"http://127.0.0.1:{http_port}/-/healthz", timeout=10)
        assert proxy.status_code == 200
        node = httpx.get(f"http://127.0.0.1:{ports['agent']}/api/healthz", timeout=10)
        assert node.status_code == 200
        base = f"http://127.0.0.1:{http_port}"
        assert httpx.get(base + "/health").json() == {"status": "ok"}
        chat = httpx.post(
            base + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
            timeout=120,
        )
        assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] == 4
        with TandemClient(f"127.0.0.1:{grpc_port}", token=TOKEN, timeout=120) as client:
            assert client.generate("Hi", max_tokens=3).usage.completion_tokens == 3
        check_models_per_pod(tmp_path, app["args"]["config"]["models"]["target"])
