"""Shared fixtures: one embedded control plane for the whole test session.

``dev_cluster`` starts a single :class:`agentauth.devcluster.server.DevCluster` in a temporary
directory, reused by every suite; tests stay independent by working in their own namespace
(``namespace`` fixture). ``kubectl`` runs the real kubectl binary against it and ``kube_api``
is an official ``kubernetes`` client configured as the admin.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentauth.devcluster import server

KUBECTL = Path(sys.executable).parent / "kubectl"

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def dev_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[server.DevCluster]:
    directory = tmp_path_factory.mktemp("devcluster")
    with server.running_cluster(directory, bookmark_interval=1.0) as cluster:
        yield cluster


def client_configuration(cluster: server.DevCluster, token: str) -> Any:
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = cluster.url
    configuration.ssl_ca_cert = str(cluster.ca_path)
    configuration.api_key = {"BearerToken": token}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    return configuration


@pytest.fixture(scope="session")
def kube_api(dev_cluster: server.DevCluster) -> Iterator[Any]:
    """A ``kubernetes.client.ApiClient`` authenticated as the admin."""
    from kubernetes import client

    api_client = client.ApiClient(client_configuration(dev_cluster, dev_cluster.admin_token))
    yield api_client
    api_client.close()


@pytest.fixture(scope="session")
def kubectl(dev_cluster: server.DevCluster) -> Kubectl:
    def run(
        *args: str,
        context: str = "admin",
        check: bool = True,
        input: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        command = [
            str(KUBECTL),
            "--kubeconfig",
            str(dev_cluster.kubeconfig_path),
            "--context",
            context,
            *args,
        ]
        result = subprocess.run(
            command, capture_output=True, text=True, input=input, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n"
                f"{result.stderr}"
            )
        return result

    return run


@pytest.fixture
def namespace(kube_api: Any) -> Iterator[str]:
    """A fresh namespace per test, deleted (in the background) afterwards."""
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)
