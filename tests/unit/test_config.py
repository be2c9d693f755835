"""Config loading: defaults work, every mistake is refused with the key named."""

import re
import subprocess
import sys

import pytest

from tandem.cluster.config.deployment import TandemConfig
from tandem.cluster.config.errors import ConfigError
from tandem.cluster.config.front_door import AuthConfig
from tandem.cluster.frontdoor.auth import authorized
from tests.support.layout import REPO

pytestmark = pytest.mark.timeout(600)  # loads models; slow on a loaded machine


def test_default_config_needs_no_file():
    config = TandemConfig()
    assert config.server.host == "127.0.0.1"
    assert config.target.replicas == 1
    assert config.target.resources == {"CPU": 1.0}
    assert config.ray.address is None


def test_yaml_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "target:\n  replicas: 2\n  resources: {CPU: 1, npu: 1}\n"
        "  engine_args: {max_model_len: 1024}\nserver:\n  port: 6000\n"
    )
    config = TandemConfig.from_yaml(path)
    assert config.target.replicas == 2
    assert config.target.resources == {"CPU": 1, "npu": 1}
    assert config.target.engine_args == {"max_model_len": 1024}
    assert config.server.port == 6000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"targets": {}}, "targets: unknown key"),
        ({"server": {"prot": 1}}, "server.prot: unknown key"),
        ({"target": {"replicas": "two"}}, "target.replicas"),
        ({"target": {"replicas": 0}}, "target.replicas"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"speculation": {"draft_length": {"verify_cost": -1}}}, "draft_length.verify_cost"),
        ({"speculation": {"draft_length": {"adaptive": "sometimes"}}}, "draft_length.adaptive"),
        ({"server": {"max_inflight": -1}}, "server.max_inflight"),
        ({"target": {"resources": {"CPU": -1}}}, "target.resources"),
        ({"target": {"resources": {}}}, "target.resources"),
        ({"target": {"strategy": "EVERYWHERE"}}, "target.strategy"),
        ({"server": {"default_max_tokens": 10, "max_tokens": 5}}, "default_max_tokens"),
        ({"target": {"engine_args": {"max_model_length": 10}}}, "max_model_length"),
        ({"target": {"engine_args": {"model": "x"}}}, "set models.target instead"),
        ({"ray": {"num_cpus": 0}}, "ray.num_cpus"),
        ({"speculation": {"drafters": {"link": {"rtt_ms": -5}}}}, "drafters.link.rtt_ms"),
        ({"speculation": {"drafters": {"link": {"delay": 5}}}}, "drafters.link.delay"),
        (
            {"speculation": {"mirror": {"enabled": True}}, "target": {"engine_args": {}}},
            "speculation.mirror.enabled",
        ),
    ],
)
def test_bad_config_names_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        TandemConfig.from_dict(data)
    assert message in str(info.value)


def test_unreadable_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read config"):
        TandemConfig.from_yaml(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        TandemConfig.from_yaml(path)


def test_overrides_are_validated():
    config = TandemConfig().with_overrides(server={"port": 7000, "host": None})
    assert config.server.port == 7000 and config.server.host == "127.0.0.1"
    with pytest.raises(ConfigError, match="server.port"):
        TandemConfig().with_overrides(server={"port": -5})


def test_serve_refuses_bad_config_before_starting(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  max_inflight: 0\n")
    run = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "server.max_inflight" in run.stderr


def test_example_configs_load():
    examples = sorted((REPO / "deploy" / "configs").glob("*.yaml"))
    examples += sorted((REPO / "benchmarks" / "configs").glob("*.yaml"))
    assert len(examples) >= 3
    for path in examples:
        config = TandemConfig.from_yaml(path)
        assert config.speculation.enabled and config.target.replicas >= 1
        config.check_serving()  # a token wherever they listen beyond loopback
    local = REPO / "deploy" / "configs" / "local-cpu.yaml"
    assert TandemConfig.from_yaml(local) == TandemConfig()  # the built-in default, written out


def test_modes_come_from_one_registry():
    """Config, proto enum and CLI name the same modes; the bench's measurement tool is none of
    them (it registers itself only in the servers the bench starts)."""
    from tandem.cli import build_parser
    from tandem.protos import tandem_pb2 as pb
    from tandem.protos.modes import mode_of, proto_mode
    from tandem.speculation.protocol import Mode

    names = set(pb.SpeculationMode.keys()) - {"SPECULATION_MODE_UNSPECIFIED"}
    assert {mode_of(pb.SpeculationMode.Value(n)) for n in names} == set(Mode)
    assert all(mode_of(proto_mode(m)) == m for m in Mode)
    generate = build_parser().parse_args(["generate", "hi", "--speculation", "suffix"])
    assert generate.speculation == "suffix"
    for mode in Mode:
        TandemConfig.from_dict({"speculation": {"default_mode": mode.value}})
    with pytest.raises(ConfigError, match="speculation.default_mode: unknown mode 'controlled'"):
        TandemConfig.from_dict({"speculation": {"default_mode": "controlled"}})
    with pytest.raises(ConfigError, match="controlled_acceptance: unknown key"):
        TandemConfig.from_dict(
            {"speculation": {"drafters": {"controlled_acceptance": {"alpha": 0.5}}}}
        )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "tandem.example"])
def test_no_token_on_the_network_unless_the_config_says_so(host, monkeypatch):
    open_door = TandemConfig.from_dict({"server": {"host": host}})
    with pytest.raises(ConfigError, match=r"server.auth: .* no token is set"):
        open_door.check_serving()
    TandemConfig.from_dict(
        {"server": {"host": host, "allow_unauthenticated": True}}
    ).check_serving()
    monkeypatch.setenv("T", "x")
    TandemConfig.from_dict({"server": {"host": host, "auth": {"token_env": "T"}}}).check_serving()
    for loopback in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        TandemConfig.from_dict({"server": {"host": loopback}}).check_serving()
    # Ray Serve's gRPC ingress listens on every interface, whatever server.host says.
    with pytest.raises(ConfigError, match="every interface"):
        TandemConfig().check_serving(exposed=True)


def test_serve_refuses_an_open_door_before_starting():
    run = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "serve", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "server.allow_unauthenticated: true" in run.stderr


def test_server_security_and_metrics_keys(tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    config = TandemConfig.from_dict(
        {
            "server": {
                "metrics_port": 9100,
                "tls": {"cert": "c.pem", "key": "k.pem", "client_ca": "ca.pem"},
                "auth": {"token_file": str(token_file)},
            }
        }
    )
    assert config.server.metrics_port == 9100
    assert config.server.tls.client_ca.name == "ca.pem"
    assert config.server.auth.token() == "s3cret"
    monkeypatch.setenv("TANDEM_T", "from-env")
    assert AuthConfig(token_env="TANDEM_T").token() == "from-env"
    monkeypatch.setenv("TANDEM_T", " ")
    with pytest.raises(ConfigError, match=r"token_env \(\$TANDEM_T\): the token is empty"):
        AuthConfig(token_env="TANDEM_T").token()
    with pytest.raises(ConfigError, match="token_file: cannot read"):
        AuthConfig(token_file=tmp_path / "missing").token()


@pytest.mark.parametrize(
    ("server", "key"),
    [
        ({"auth": {}}, "server.auth: set exactly one of token_file and token_env"),
        ({"auth": {"token_env": "A", "token_file": "b"}}, "server.auth: set exactly one"),
        ({"auth": {"token": "literal"}}, "server.auth.token: unknown key"),
        ({"tls": {"cert": "c.pem"}}, "server.tls.key: Field required"),
        ({"metrics_port": 70000}, "server.metrics_port"),
    ],
)
def test_bad_server_security_keys(server, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        TandemConfig.from_dict({"server": server})


def test_config_from_serve_args(tmp_path):
    inline = TandemConfig.from_serve_args({"config": {"target": {"replicas": 2}}})
    assert inline.target.replicas == 2
    path = tmp_path / "t.yaml"
    path.write_text("server: {max_inflight: 3}\n")
    assert TandemConfig.from_serve_args({"config_path": str(path)}).server.max_inflight == 3
    assert TandemConfig.from_serve_args({}) == TandemConfig()
    with pytest.raises(ConfigError, match="unknown key"):
        TandemConfig.from_serve_args({"cfg": {}})
    with pytest.raises(ConfigError, match="not both"):
        TandemConfig.from_serve_args({"config": {}, "config_path": str(path)})


def test_bearer_token_check():
    assert authorized([], None) and authorized(["anything"], None)
    assert authorized(["Bearer abc"], "abc") and authorized(["bearer  abc "], "abc")
    assert not authorized([], "abc")
    assert not authorized(["Bearer abd"], "abc") and not authorized(["Bearer ab"], "abc")
    assert not authorized(["Basic abc"], "abc")
    # A repeated header is refused, whichever copy holds the token.
    assert not authorized(["Bearer abc", "Bearer abc"], "abc")
    assert not authorized(["Bearer nope", "Bearer abc"], "abc")
    # Any text is just a wrong token, never an error.
    assert not authorized(["Bearer \u00e9t\u00e9 \ud800"], "abc")
    assert authorized(["Bearer t\u00f6ken"], "t\u00f6ken")
