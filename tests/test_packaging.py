"""The distribution's shape: names, extras and the install commands the docs and image use.

Real here: ``pyproject.toml`` as setuptools reads it, the SDK imported in a fresh interpreter of
this virtualenv, and every ``pip install`` line in the docs, the README and the Dockerfile. The
wheel installed alone into a new virtualenv and exchanging against the dev stack is
``tests/e2e/test_packaging.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DISTRIBUTION = "agentauth-k8s"
# What an agent pod must never pull in: the operator's server side and the plugin's client.
SERVER_MODULES = {
    "kopf",
    "kubernetes",
    "aiohttp",
    "pydantic",
    "yaml",
    "prometheus_client",
    "celpy",
    "helm_python",
}
# `pip install 'agentauth-k8s[x]'`, `pip install ".[x]"` and the like.
PIP_INSTALL = re.compile(r"pip install (?:-\S+ )*['\"]?([^\s'\"`]+)['\"]?")


def _extras() -> set[str]:
    return set(PYPROJECT["project"]["optional-dependencies"])


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ;]", item, maxsplit=1)[0].lower() for item in requirements}


def test_the_distribution_name_is_ours_and_the_scripts_point_at_the_entry_points() -> None:
    assert PYPROJECT["project"]["name"] == DISTRIBUTION
    assert PYPROJECT["project"]["scripts"] == {
        "agentauth": "agentauth.entrypoints:agentauth",
        "kubectl-agentauth": "agentauth.entrypoints:kubectl_agentauth",
    }


def test_the_base_install_is_the_sdk_dependencies_only() -> None:
    base = _requirement_names(PYPROJECT["project"]["dependencies"])
    assert base == {"cryptography", "httpx", "http-message-signatures", "http-sf", "pyjwt"}
    operator = _requirement_names(PYPROJECT["project"]["optional-dependencies"]["operator"])
    assert {"kopf", "kubernetes", "aiohttp", "pydantic", "prometheus-client"} <= operator


def test_importing_the_sdk_and_the_verifier_loads_no_server_package() -> None:
    probe = (
        "import sys, agentauth.sdk, agentauth.verify, agentauth.sdk.keys\n"
        "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", probe], check=True, capture_output=True, text=True
        ).stdout.split()
    )
    assert "agentauth" in loaded
    assert loaded & SERVER_MODULES == set()


def _install_lines() -> list[tuple[Path, str]]:
    found = []
    for path in [ROOT / "README.md", ROOT / "Dockerfile", *sorted((ROOT / "docs").rglob("*.md"))]:
        for line in path.read_text().splitlines():
            found += [(path, m) for m in PIP_INSTALL.findall(line) if m != "pip"]
    return found


def test_every_install_command_names_our_distribution_and_existing_extras() -> None:
    lines = _install_lines()
    assert len(lines) >= 10, lines
    extras = _extras()
    for path, target in lines:
        name, _, rest = target.partition("[")
        # From the index, a checkout (.) or a built wheel: never the unrelated "agentauth".
        assert name in (DISTRIBUTION, ".", "dist/agentauth_k8s-0.1.0-py3-none-any.whl"), (
            path,
            target,
        )
        wanted = set(rest.rstrip("]").split(",")) - {""}
        assert wanted <= extras, (path, target, wanted - extras)


def test_the_image_installs_the_operator_extra() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'pip install ".[operator,aws,gcp]"' in dockerfile
