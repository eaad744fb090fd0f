"""Shared fixtures: one embedded control plane for the whole test session.

``dev_cluster`` starts a single :class:`agentauth.devcluster.server.DevCluster` in a temporary
directory, reused by every suite; tests stay independent by working in their own namespace
(``namespace`` fixture). ``kubectl`` runs the real kubectl binary against it and ``kube_api``
is an official ``kubernetes`` client configured as the admin.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agentauth.devcluster import server
from tests import stack

# Suites import these from here (tests.stack holds the one copy).
from tests.stack import KUBECTL as KUBECTL
from tests.stack import Kubectl as Kubectl
from tests.stack import client_configuration as client_configuration


@pytest.fixture(scope="session")
def dev_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[server.DevCluster]:
    directory = tmp_path_factory.mktemp("devcluster")
    with server.running_cluster(directory, bookmark_interval=1.0) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def kube_api(dev_cluster: server.DevCluster) -> Iterator[Any]:
    """A ``kubernetes.client.ApiClient`` authenticated as the admin."""
    from kubernetes import client

    api_client = client.ApiClient(client_configuration(dev_cluster, dev_cluster.admin_token))
    yield api_client
    api_client.close()


@pytest.fixture(scope="session")
def kubectl(dev_cluster: server.DevCluster) -> Kubectl:
    """Real kubectl against ``dev_cluster`` as ``context`` (admin unless given)."""

    def run(*args: str, **options: Any) -> subprocess.CompletedProcess[str]:
        return stack.run_kubectl(*args, kubeconfig=dev_cluster.kubeconfig_path, **options)

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
