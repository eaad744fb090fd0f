"""The built wheel, installed alone into a fresh virtualenv, is enough for an agent pod.

Real here: ``pip wheel`` builds ``agentauth-k8s`` from this checkout, ``python -m venv`` makes an
empty environment, ``pip install`` resolves the base dependencies from the package index (or
pip's cache), and a script run by that environment's interpreter exchanges a projected token at
the dev stack's token service with ``AgentClient.from_environment()``. The distributions that
got installed are asserted by name: none of the operator's server dependencies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack

ROOT = Path(__file__).resolve().parents[2]
SERVER_DISTRIBUTIONS = {
    "kopf",
    "kubernetes",
    "aiohttp",
    "pydantic",
    "pyyaml",
    "prometheus-client",
    "cel-python",
    "helm-python-sdk",
    "python-dateutil",
}
EXCHANGE = textwrap.dedent(
    """
    import json, sys
    from agentauth.sdk import AgentClient

    client = AgentClient.from_environment()
    info = client.token_info(scope=["document.read"])
    loaded = sorted({name.split(".")[0] for name in sys.modules})
    print(json.dumps({"token": info.access_token, "scope": list(info.scope), "loaded": loaded}))
    """
)


def _run(*args: str | Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with only the built wheel (and what it depends on) installed."""
    work = tmp_path_factory.mktemp("packaging")
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        work / "dist",
        ROOT,
    )
    wheels = list((work / "dist").glob("agentauth_k8s-*.whl"))
    assert len(wheels) == 1, wheels
    venv = work / "venv"
    _run(sys.executable, "-m", "venv", venv)
    _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheels[0])
    return venv


def _installed(venv: Path) -> set[str]:
    listing = json.loads(
        _run(
            venv / "bin" / "python",
            "-m",
            "pip",
            "list",
            "--format",
            "json",
            "--disable-pip-version-check",
        )
    )
    return {entry["name"].lower().replace("_", "-") for entry in listing}


@pytest.mark.slow
def test_the_wheel_alone_installs_the_sdk_without_server_dependencies(sdk_venv: Path) -> None:
    installed = _installed(sdk_venv)
    assert {
        "agentauth-k8s",
        "httpx",
        "cryptography",
        "http-message-signatures",
        "http-sf",
        "pyjwt",
    } <= (installed)
    assert installed & SERVER_DISTRIBUTIONS == set()


@pytest.mark.slow
def test_the_sdk_from_the_wheel_exchanges_at_the_dev_stack(
    sdk_venv: Path, dev_stack: Stack, tmp_path: Path
) -> None:
    namespace = dev_stack.new_namespace("wheel")
    dev_stack.create_agent(namespace, "reader", capabilities=[{"name": "document.read"}])
    pod = dev_stack.create_pod(namespace, "reader-0", agent="reader")
    token_file = tmp_path / "token"
    token_file.write_text(dev_stack.projected_token(namespace, "reader-0"))
    injected = {
        item["name"]: item.get("value", "")
        for item in pod["spec"]["containers"][0]["env"]
        if item["name"].startswith("AGENTAUTH_")
    }
    env = {
        "PATH": os.environ.get("PATH", ""),
        **injected,
        "AGENTAUTH_TOKEN_FILE": str(token_file),
        "AGENTAUTH_CA_FILE": str(dev_stack.ca_path),
    }
    result = json.loads(_run(sdk_venv / "bin" / "python", "-c", EXCHANGE, env=env))
    claims = dev_stack.decode(result["token"])
    assert claims["agent"]["name"] == "reader"
    assert claims["agent"]["namespace"] == namespace
    assert result["scope"] == ["document.read"]
    assert set(result["loaded"]) & {m.replace("-", "_") for m in SERVER_DISTRIBUTIONS} == set()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "extra"), [("agentauth", "operator"), ("kubectl-agentauth", "kubectl")]
)
def test_console_scripts_without_their_extra_name_it(
    sdk_venv: Path, script: str, extra: str
) -> None:
    done = subprocess.run(
        [str(sdk_venv / "bin" / script), "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert f"pip install 'agentauth-k8s[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr
