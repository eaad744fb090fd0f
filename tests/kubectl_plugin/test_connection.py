"""Kubeconfig loading as kubectl does it: merging, current context, overrides, namespaces."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentauth.kubectl_plugin import connection


def options(**overrides: Any) -> argparse.Namespace:
    values: dict[str, Any] = {
        "kubeconfig": None,
        "context": None,
        "cluster": None,
        "user": None,
        "namespace": None,
        "token": None,
        "server": None,
        "certificate_authority": None,
        "insecure_skip_tls_verify": None,
    }
    values.update(overrides)
    return argparse.Namespace(**values)


def write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def two_files(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "a").mkdir()
    first = write(
        tmp_path / "a" / "config",
        {
            "current-context": "alice",
            "clusters": [
                {
                    "name": "dev",
                    "cluster": {
                        "server": "https://127.0.0.1:6443",
                        "certificate-authority": "ca.crt",
                    },
                }
            ],
            "users": [{"name": "alice", "user": {"token": "alice-token"}}],
            "contexts": [
                {
                    "name": "alice",
                    "context": {"cluster": "dev", "user": "alice", "namespace": "shop"},
                }
            ],
        },
    )
    (tmp_path / "a" / "ca.crt").write_text("not really a certificate")
    second = write(
        tmp_path / "second",
        {
            "current-context": "bob",
            "clusters": [
                {"name": "dev", "cluster": {"server": "https://shadowed.invalid"}},
                {
                    "name": "other",
                    "cluster": {"server": "https://10.0.0.1", "insecure-skip-tls-verify": True},
                },
            ],
            "users": [{"name": "bob", "user": {"token": "bob-token"}}],
            "contexts": [{"name": "bob", "context": {"cluster": "other", "user": "bob"}}],
        },
    )
    return first, second


def test_merge_first_file_wins_and_paths_resolve(two_files: tuple[Path, Path]) -> None:
    first, second = two_files
    merged = connection.merge_kubeconfigs([first, second, first.parent / "missing"], explicit=False)
    assert merged["current-context"] == "alice"
    clusters = {entry["name"]: entry["cluster"] for entry in merged["clusters"]}
    assert clusters["dev"]["server"] == "https://127.0.0.1:6443"
    assert clusters["dev"]["certificate-authority"] == str(first.parent.resolve() / "ca.crt")
    assert set(clusters) == {"dev", "other"}


def test_kubeconfig_env_with_several_files(
    two_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = two_files
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(second), str(first)]))
    conn = connection.connect(options())
    # The second file is listed first now, so its current-context (bob) wins.
    assert conn.context == "bob"
    assert conn.user == "bob"
    assert conn.namespace == "default"
    assert conn.api_client.configuration.host == "https://10.0.0.1"
    assert conn.api_client.configuration.api_key["BearerToken"] == "Bearer bob-token"


def test_context_namespace_and_overrides(
    two_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = two_files
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(first), str(second)]))
    conn = connection.connect(options())
    assert (conn.context, conn.namespace, conn.user) == ("alice", "shop", "alice")
    assert conn.api_client.configuration.api_key["BearerToken"] == "Bearer alice-token"
    conn = connection.connect(options(context="alice", user="bob", namespace="ops"))
    assert (conn.namespace, conn.user) == ("ops", "bob")
    assert conn.api_client.configuration.api_key["BearerToken"] == "Bearer bob-token"
    conn = connection.connect(
        options(server="https://127.0.0.2:7443", token="t0k", insecure_skip_tls_verify=True)
    )
    assert conn.api_client.configuration.host == "https://127.0.0.2:7443"
    assert conn.api_client.configuration.api_key["BearerToken"] == "Bearer t0k"
    assert conn.api_client.configuration.verify_ssl is False
    conn = connection.connect(options(cluster="other", kubeconfig=str(second), context="bob"))
    assert conn.api_client.configuration.host == "https://10.0.0.1"


def test_errors_name_what_to_fix(two_files: tuple[Path, Path], tmp_path: Path) -> None:
    first, _ = two_files
    with pytest.raises(connection.KubeconfigError) as caught:
        connection.connect(options(kubeconfig=str(first), context="nope"))
    assert str(caught.value) == "context 'nope' is not in the kubeconfig; known contexts: alice"
    with pytest.raises(connection.KubeconfigError) as caught:
        connection.connect(options(kubeconfig=str(tmp_path / "absent")))
    assert str(caught.value) == f"kubeconfig file {tmp_path / 'absent'} does not exist"
    with pytest.raises(connection.KubeconfigError) as caught:
        connection.connect(options(kubeconfig=str(first), user="mallory"))
    assert str(caught.value) == "user 'mallory' is not in the kubeconfig"
    empty = write(tmp_path / "empty", {"clusters": [], "users": [], "contexts": []})
    with pytest.raises(connection.KubeconfigError) as caught:
        connection.connect(options(kubeconfig=str(empty)))
    assert str(caught.value) == (
        f"no current context in the kubeconfig ({empty}): pass --context, or --server with "
        "--token, or run 'kubectl config use-context NAME'"
    )


def test_default_path_is_home_kube_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert connection.kubeconfig_paths(None) == [tmp_path / ".kube" / "config"]
