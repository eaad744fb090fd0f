"""The ``agentauth`` command line: help that reads well, and exact errors for bad input.

Most cases call :func:`agentauth.cli.main` in process (argparse exits with status 2 on usage
errors); a few run the installed console script, which is what people type.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agentauth import cli

BIN = Path(sys.executable).parent


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as stop:
        code = int(stop.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_console_script_lists_every_command() -> None:
    result = subprocess.run(
        [str(BIN / "agentauth"), "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0
    for command, summary in (
        ("crds", "generate the CustomResourceDefinitions from the models"),
        ("controller", "run the controller"),
        ("token-service", "run the token service"),
        ("dev", "run everything locally on an embedded control plane"),
    ):
        assert command in result.stdout
        assert summary in " ".join(result.stdout.split())


def test_dev_help_says_development_only_and_names_run_as_pod(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(["dev", "--help"], capsys)
    text = " ".join(out.split())
    assert code == 0
    assert "FOR DEVELOPMENT AND TESTS ONLY, never for production" in text
    assert "Prints `ready kubeconfig=PATH` once everything serves" in text
    assert "run-as-pod" in text
    for flag in ("--dir DIR", "--port N", "--token-service-port N", "--webhook-port N"):
        assert flag in text


def test_run_as_pod_help_is_the_projection_tools(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["dev", "run-as-pod", "--help"], capsys)
    assert code == 0
    assert out.startswith("usage: agentauth dev run-as-pod POD [-n NS]")


def test_controller_and_token_service_help_list_their_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(["controller", "--help"], capsys)
    assert code == 0
    assert "--issuer" in out and "--webhook-port" in out and "AGENTAUTH_ISSUER" in out
    code, out, _ = run(["token-service", "--help"], capsys)
    assert code == 0
    assert "--listen-port" in out and "AGENTAUTH_LISTEN_PORT" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dev", "--port", "http"], "argument --port: invalid port 'http': not a number"),
        (
            ["dev", "--token-service-port", "70000"],
            "argument --token-service-port: invalid port 70000: must be 0-65535 (0: a free port)",
        ),
        (["dev", "--colour"], "unrecognized arguments: --colour"),
        (["nonsense"], "argument COMMAND: invalid choice: 'nonsense'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_exit_2_with_the_reason(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == ""
    assert message in err


def test_controller_without_an_issuer_says_which_setting_is_missing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTAUTH_ISSUER", raising=False)
    code, _, err = run(["controller"], capsys)
    assert code == 2
    assert err == (
        "agentauth controller: error: --issuer / AGENTAUTH_ISSUER is required "
        "(the token issuer URL)\n"
    )


def test_controller_rejects_a_plain_http_issuer(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["controller", "--issuer", "http://agentauth.example"], capsys)
    assert code == 2
    assert err == (
        "agentauth controller: error: --issuer / AGENTAUTH_ISSUER: 'http://agentauth.example' "
        "is not an https:// URL\n"
    )


def test_token_service_rejects_a_bad_port(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        ["token-service", "--issuer", "https://agentauth.example", "--listen-port", "eighty"],
        capsys,
    )
    assert code == 2
    assert err == (
        "agentauth token-service: error: --listen-port / AGENTAUTH_LISTEN_PORT: 'eighty' is not "
        "valid\n"
    )


def test_token_service_needs_cert_and_key_together(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        ["token-service", "--issuer", "https://agentauth.example", "--tls-cert", "/tmp/x.crt"],
        capsys,
    )
    assert code == 2
    assert (
        err == "agentauth token-service: error: --tls-cert and --tls-key must be given together\n"
    )


def test_run_as_pod_without_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["dev", "run-as-pod", "some-pod", "-n", "demo"], capsys)
    assert code == 2
    assert err == "agentauth dev run-as-pod: a command is required after --\n"


def test_run_as_pod_with_a_missing_kubeconfig(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nope" / "kubeconfig"
    code, _, err = run(
        ["dev", "run-as-pod", "p", "--kubeconfig", str(missing), "--", "true"], capsys
    )
    assert code == 1
    assert err.startswith(f"agentauth dev run-as-pod: cannot read kubeconfig {missing}:")


def test_dev_with_a_missing_chart_fails_before_starting_anything(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(
        ["dev", "--dir", str(tmp_path / "dev"), "--chart", str(tmp_path / "no-chart")], capsys
    )
    assert code == 1
    assert "ready" not in out
    assert err.endswith(
        f"agentauth dev: error: no Helm chart at {tmp_path / 'no-chart'} "
        "(agentauth dev runs from a source checkout)\n"
    )
    assert not (tmp_path / "dev" / "kubeconfig").exists()


def test_dev_rejects_malformed_trusted_issuers_before_starting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(
        ["dev", "--dir", str(tmp_path / "dev"), "--trusted-issuers", "[{'issuer': 1}]"], capsys
    )
    assert code == 1
    assert "ready" not in out
    assert err.endswith(
        "agentauth dev: error: --trusted-issuers / AGENTAUTH_TRUSTED_ISSUERS must be a JSON list"
        ' of {"issuer", "jwks_url", "audience"} with an optional boolean "require_may_act"\n'
    )
    assert not (tmp_path / "dev" / "kubeconfig").exists()
