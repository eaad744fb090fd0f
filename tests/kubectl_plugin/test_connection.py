"""Kubeconfig loading as kubectl does it: merging, current context, overrides, namespaces."""

from __future__ import annotations

import argparse
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from urllib3 import exceptions as urllib3_exceptions

from agentauth.kubectl_plugin import connection, errors


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
        "request_timeout": None,
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


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(None, 30.0), ("30s", 30.0), ("1m30s", 90.0), ("500ms", 0.5), ("2", 2.0), ("1h", 3600.0)],
)
def test_request_timeout_takes_kubectl_durations(
    two_files: tuple[Path, Path], text: str | None, seconds: float
) -> None:
    conn = connection.connect(options(kubeconfig=str(two_files[0]), request_timeout=text))
    assert conn.request_timeout == seconds
    assert conn.api_client.request_timeout == seconds


NO_ZERO = "--request-timeout must be more than 0: every call to the API server has a deadline"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "--request-timeout must be more than 0: every call to the API server has a deadline"),
        (
            "0s",
            "--request-timeout must be more than 0: every call to the API server has a deadline",
        ),
        (
            "soon",
            "--request-timeout 'soon' is not a duration: use a number of seconds or units such as "
            "30s, 2m, 1m30s",
        ),
        (
            "-5s",
            "--request-timeout '-5s' is not a duration: use a number of seconds or units such as "
            "30s, 2m, 1m30s",
        ),
    ],
)
def test_request_timeout_refusals(two_files: tuple[Path, Path], text: str, message: str) -> None:
    with pytest.raises(connection.KubeconfigError) as caught:
        connection.connect(options(kubeconfig=str(two_files[0]), request_timeout=text))
    assert str(caught.value) == message


def test_every_call_ends_at_the_deadline_and_says_what_it_waited_for() -> None:
    # A socket that listens and never answers: a stopped API server looks exactly like this
    # (the kernel completes the TCP handshake, nothing answers the TLS one).
    with socket.socket() as frozen:
        frozen.bind(("127.0.0.1", 0))
        frozen.listen(8)
        server = f"https://127.0.0.1:{frozen.getsockname()[1]}"
        conn = connection.connect(
            options(server=server, token="t", insecure_skip_tls_verify=True, request_timeout="1s")
        )
        started = time.monotonic()
        with pytest.raises(urllib3_exceptions.HTTPError) as caught:
            client.CustomObjectsApi(conn.api_client).list_namespaced_custom_object(
                "agentauth.dev", "v1alpha1", "default", "accessrequests"
            )
        assert time.monotonic() - started < 5
    message = errors.from_connection_error(
        caught.value,
        server=server,
        context="",
        action="list",
        what="accessrequests",
        timeout=conn.request_timeout,
    ).message
    assert message == (
        f"timed out waiting for the API server at {server} (context '') to list accessrequests: "
        "no answer within 1s; the cluster may be down or overloaded; try again, or allow longer "
        "with --request-timeout"
    )
