"""One attack-run stack (two token-service replicas on the dev cluster) for the security suite."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agentauth.devcluster import server
from tests import stack
from tests.security import realstack


@pytest.fixture(scope="package")
def attack(
    dev_cluster: server.DevCluster,
    kubectl: stack.Kubectl,
    kube_api: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[realstack.Stack]:
    with realstack.running(
        dev_cluster, kubectl, kube_api, tmp_path_factory.mktemp("attack")
    ) as running:
        yield running
