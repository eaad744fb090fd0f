"""``agentauth dev run-as-pod`` against the real embedded control plane.

The command under test is a real Python child process; it reports what it saw (environment,
files, modes) into a JSON file the test reads afterwards.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agentauth.devcluster import projection, server

TOKEN_MOUNT = "/var/run/secrets/tokens"


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


@pytest.fixture
def agent_pod(kube_api: Any, namespace: str) -> dict[str, Any]:
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "agent-sa"}})
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "agent-secret"}, "stringData": {"api-key": "s3cret"}}
    )
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "agent-config"}, "data": {"mode": "strict"}}
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "agent", "labels": {"agentauth.dev/agent": "planner"}},
        "spec": {
            "serviceAccountName": "agent-sa",
            "containers": [
                {
                    "name": "main",
                    "image": "python:3.11",
                    "env": [
                        {"name": "TOKEN_PATH", "value": f"{TOKEN_MOUNT}/agentauth"},
                        {
                            "name": "POD_NAME",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                        },
                        {"name": "GREETING", "value": "hello $(POD_NAME) $$(POD_NAME)"},
                        {"name": "CONFIG_DIR", "value": "/etc/agent"},
                        {"name": "NAMESPACE_FILE", "value": "/etc/podinfo/namespace"},
                        {"name": "LOOKALIKE", "value": f"{TOKEN_MOUNT}-other/x"},
                        {
                            "name": "API_KEY",
                            "valueFrom": {
                                "secretKeyRef": {"name": "agent-secret", "key": "api-key"}
                            },
                        },
                        {
                            "name": "MODE",
                            "valueFrom": {
                                "configMapKeyRef": {"name": "agent-config", "key": "mode"}
                            },
                        },
                        {
                            "name": "AGENT",
                            "valueFrom": {
                                "fieldRef": {"fieldPath": "metadata.labels['agentauth.dev/agent']"}
                            },
                        },
                    ],
                    "volumeMounts": [
                        {"name": "agentauth-token", "mountPath": TOKEN_MOUNT, "readOnly": True},
                        {"name": "config", "mountPath": "/etc/agent"},
                        {"name": "podinfo", "mountPath": "/etc/podinfo"},
                    ],
                }
            ],
            "volumes": [
                {
                    "name": "podinfo",
                    "downwardAPI": {
                        "items": [
                            {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
                        ]
                    },
                },
                {
                    "name": "agentauth-token",
                    "projected": {
                        "sources": [
                            {
                                "serviceAccountToken": {
                                    "audience": "agentauth",
                                    "expirationSeconds": 600,
                                    "path": "agentauth",
                                }
                            }
                        ]
                    },
                },
                {
                    "name": "config",
                    "projected": {
                        "sources": [
                            {"configMap": {"name": "agent-config"}},
                            {
                                "secret": {
                                    "name": "agent-secret",
                                    "items": [{"key": "api-key", "path": "keys/api"}],
                                }
                            },
                        ]
                    },
                },
            ],
        },
    }
    created: dict[str, Any] = kube_api.sanitize_for_serialization(
        core.create_namespaced_pod(namespace, pod)
    )
    return created


REPORTER = textwrap.dedent(
    """
    import json, os, stat, sys, time
    token_path = os.environ["TOKEN_PATH"]
    first = open(token_path).read()
    rotated = None
    if sys.argv[2] == "wait-for-rotation":
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            current = open(token_path).read()
            if current != first:
                rotated = current
                break
            time.sleep(0.05)
    report = {
        "env": {k: os.environ.get(k) for k in
                ("TOKEN_PATH", "POD_NAME", "GREETING", "CONFIG_DIR", "LOOKALIKE",
                 "AGENTAUTH_TOKEN_FILE", "AGENTAUTH_POD_ROOT", "PATH", "API_KEY", "MODE",
                 "AGENT")},
        "token": first,
        "rotated": rotated,
        "token_mode": stat.S_IMODE(os.stat(token_path).st_mode),
        "root_mode": stat.S_IMODE(os.stat(os.environ["AGENTAUTH_POD_ROOT"]).st_mode),
        "config": open(os.path.join(os.environ["CONFIG_DIR"], "mode")).read(),
        "api_key_file": open(os.path.join(os.environ["CONFIG_DIR"], "keys", "api")).read(),
        "namespace_file": open(os.environ["NAMESPACE_FILE"]).read(),
    }
    open(sys.argv[1], "w").write(json.dumps(report))
    sys.exit(int(sys.argv[3]))
    """
)


async def test_run_as_pod_projects_token_env_and_config(
    dev_cluster: server.DevCluster,
    kube_api: Any,
    namespace: str,
    agent_pod: dict[str, Any],
    tmp_path: Path,
) -> None:
    from kubernetes import client

    report_path = tmp_path / "report.json"
    code = await projection.run_as_pod(
        kubeconfig=dev_cluster.kubeconfig_path,
        namespace=namespace,
        pod="agent",
        command=[sys.executable, "-c", REPORTER, str(report_path), "once", "3"],
    )
    assert code == 3  # the command's exit code is passed through
    report = json.loads(report_path.read_text())
    env = report["env"]
    root = Path(env["AGENTAUTH_POD_ROOT"])
    assert env["TOKEN_PATH"] == str(root / "volumes" / "agentauth-token" / "agentauth")
    assert env["AGENTAUTH_TOKEN_FILE"] == env["TOKEN_PATH"]
    assert env["CONFIG_DIR"] == str(root / "volumes" / "config")
    assert env["LOOKALIKE"] == f"{TOKEN_MOUNT}-other/x"  # not under the mount path: untouched
    assert env["POD_NAME"] == "agent"
    assert env["GREETING"] == "hello agent $(POD_NAME)"
    assert env["PATH"] == os.environ["PATH"]  # the local environment is inherited
    assert report["config"] == "strict"
    assert report["api_key_file"] == "s3cret"
    assert report["namespace_file"] == namespace
    assert (env["API_KEY"], env["MODE"], env["AGENT"]) == ("s3cret", "strict", "planner")
    assert report["token_mode"] == 0o600 and report["root_mode"] == 0o700
    assert not root.exists()  # cleaned up

    claims = _claims(report["token"])
    assert claims["aud"] == ["agentauth"]
    assert claims["exp"] - claims["iat"] == 600
    assert claims["sub"] == f"system:serviceaccount:{namespace}:agent-sa"
    assert claims["kubernetes.io"]["pod"] == {"name": "agent", "uid": agent_pod["metadata"]["uid"]}
    review = client.AuthenticationV1Api(kube_api).create_token_review(
        {"spec": {"token": report["token"], "audiences": ["agentauth"]}}
    )
    assert review.status.authenticated is True
    assert review.status.user.extra["authentication.kubernetes.io/pod-name"] == ["agent"]


async def test_tokens_are_refreshed(
    dev_cluster: server.DevCluster, namespace: str, agent_pod: dict[str, Any], tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    # 0.2% of 600 s: the first refresh comes after about 1.2 s instead of 480 s.
    code = await projection.run_as_pod(
        kubeconfig=dev_cluster.kubeconfig_path,
        namespace=namespace,
        pod="agent",
        command=[sys.executable, "-c", REPORTER, str(report_path), "wait-for-rotation", "0"],
        refresh_fraction=0.002,
    )
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["rotated"] is not None, "the token was not refreshed within 30 s"
    first, second = _claims(report["token"]), _claims(report["rotated"])
    assert second["jti"] != first["jti"]
    assert second["kubernetes.io"]["pod"] == first["kubernetes.io"]["pod"]


def test_signals_are_forwarded_and_the_directory_removed(
    dev_cluster: server.DevCluster, namespace: str, agent_pod: dict[str, Any]
) -> None:
    child = textwrap.dedent(
        """
        import os, signal, sys
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
        print(os.environ["AGENTAUTH_POD_ROOT"], flush=True)
        while True:
            signal.pause()
        """
    )
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentauth.devcluster.projection",
            "agent",
            "-n",
            namespace,
            "--kubeconfig",
            str(dev_cluster.kubeconfig_path),
            "--",
            sys.executable,
            "-c",
            child,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert runner.stdout is not None
        line = runner.stdout.readline().strip()  # printed once the child's handler is installed
        assert line, "run-as-pod exited before the command started"
        root = Path(line)
        assert root.is_dir()
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=30) == 7
        assert not root.exists()
    finally:
        if runner.poll() is None:
            runner.kill()


def test_errors_are_reported(
    dev_cluster: server.DevCluster, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "ghost",
        "-n",
        namespace,
        "--kubeconfig",
        str(dev_cluster.kubeconfig_path),
        "--",
        "true",
    ]
    assert projection.main(argv) == 1
    assert capsys.readouterr().err == (
        f"agentauth dev run-as-pod: GET /api/v1/namespaces/{namespace}/pods/ghost: "
        'HTTP 404: pods "ghost" not found\n'
    )
    assert projection.main(["ghost", "-n", namespace]) == 2
    assert capsys.readouterr().err == "agentauth dev run-as-pod: a command is required after --\n"


def test_pod_without_a_service_account_token_in_its_namespace_fails(
    dev_cluster: server.DevCluster,
    kube_api: Any,
    namespace: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kubernetes import client

    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "orphan"},
            "spec": {
                "serviceAccountName": "missing-sa",
                "containers": [
                    {
                        "name": "main",
                        "image": "x",
                        "volumeMounts": [{"name": "t", "mountPath": "/t"}],
                    }
                ],
                "volumes": [
                    {
                        "name": "t",
                        "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]},
                    }
                ],
            },
        },
    )
    argv = [
        "orphan",
        "-n",
        namespace,
        "--kubeconfig",
        str(dev_cluster.kubeconfig_path),
        "--",
        "true",
    ]
    assert projection.main(argv) == 1
    assert capsys.readouterr().err == (
        "agentauth dev run-as-pod: "
        f"POST /api/v1/namespaces/{namespace}/serviceaccounts/missing-sa/token: "
        'HTTP 404: serviceaccounts "missing-sa" not found\n'
    )


def test_kubeconfig_must_verify_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1', "
        "insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
    )
    assert projection.main(["p", "--kubeconfig", str(kubeconfig), "--", "true"]) == 1
    assert capsys.readouterr().err == (
        "agentauth dev run-as-pod: refusing insecure-skip-tls-verify: "
        "the token would be sent unverified\n"
    )
    assert (
        projection.main(["p", "--kubeconfig", str(kubeconfig), "--context", "x", "--", "true"]) == 1
    )
    assert capsys.readouterr().err == (
        f'agentauth dev run-as-pod: kubeconfig {kubeconfig} has no context named "x"\n'
    )
