"""``kubectl agentauth``: review and decide just-in-time access requests, inspect agents and tokens.

Installed as the ``kubectl-agentauth`` console script, so ``kubectl agentauth ...`` runs it.
kubectl passes no flags placed before the plugin's name, so each subcommand takes kubectl's
connection flags itself (see :mod:`agentauth.kubectl_plugin.connection`). Guarantees: exit status
0 on success, 1 on any failure with ``error: <sentence>`` on stderr, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from agentauth.kubectl_plugin import agent_commands, commands, connection, health, watching
from agentauth.kubectl_plugin.errors import PluginError

Handler = Callable[[commands.Context], int]


def _output_flag(
    parser: argparse.ArgumentParser, *, formats: Sequence[str] = ("json", "yaml")
) -> None:
    parser.add_argument("-o", "--output", choices=list(formats), help="print JSON or YAML")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl agentauth",
        description="Review and decide agentauth access requests; inspect agents and tokens.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, handler: Handler, help_text: str, *, kube: bool = True
    ) -> argparse.ArgumentParser:
        child = sub.add_parser(name, help=help_text, description=help_text)
        child.set_defaults(handler=handler)
        if kube:
            connection.add_flags(child)
        return child

    requests = command(
        "requests", watching.cmd_requests, "list access requests (pending ones first)"
    )
    requests.add_argument(
        "-A", "--all-namespaces", action="store_true", help="list across all namespaces"
    )
    requests.add_argument(
        "--all", action="store_true", help="include approved, denied and expired requests"
    )
    requests.add_argument(
        "-w", "--watch", action="store_true", help="after listing, print each change as it happens"
    )
    requests.add_argument(
        "--watch-timeout",
        type=float,
        metavar="SECONDS",
        help="with --watch: stop after this many seconds (default: until interrupted)",
    )
    _output_flag(requests)

    describe = command("describe", commands.cmd_describe, "show one access request in detail")
    describe.add_argument("name", help="the AccessRequest name")
    _output_flag(describe)

    approve = command("approve", commands.cmd_approve, "approve a pending access request")
    approve.add_argument("name", help="the AccessRequest name")
    approve.add_argument("--comment", default="", help="a note recorded with your approval")

    deny = command("deny", commands.cmd_deny, "deny a pending access request")
    deny.add_argument("name", help="the AccessRequest name")
    deny.add_argument("--reason", required=True, help="why (recorded, shown to the agent)")

    agents = command("agents", commands.cmd_agents, "list agents, readiness and capabilities")
    agents.add_argument(
        "-A", "--all-namespaces", action="store_true", help="list across all namespaces"
    )
    _output_flag(agents)

    token = sub.add_parser("token", help="decode or verify an agent token")
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    decode = token_sub.add_parser("decode", help="print a JWT's header and claims (not verified)")
    decode.set_defaults(handler=commands.cmd_token_decode)
    decode.add_argument("jwt", help="the token, or - to read it from stdin")
    _output_flag(decode)
    verify = token_sub.add_parser("verify", help="verify an agent token against the issuer's JWKS")
    verify.set_defaults(handler=commands.cmd_token_verify)
    verify.add_argument("jwt", help="the token, or - to read it from stdin")
    verify.add_argument(
        "--issuer",
        default=os.environ.get("AGENTAUTH_ISSUER"),
        help="the issuer URL you trust (default: $AGENTAUTH_ISSUER)",
    )
    verify.add_argument("--audience", help="also require this audience")
    verify.add_argument(
        "--issuer-ca",
        default=os.environ.get("AGENTAUTH_CA_FILE") or None,
        help="CA bundle for the issuer's HTTPS certificate (default: $AGENTAUTH_CA_FILE)",
    )
    _output_flag(verify)

    keys = sub.add_parser("keys", help="key pairs for agents outside the cluster")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    generate = keys_sub.add_parser(
        "generate", help="generate an Ed25519 key pair; print the public JWKS for the Agent"
    )
    generate.set_defaults(handler=commands.cmd_keys_generate)
    generate.add_argument("--out", required=True, help="where to write the private key (0600)")
    generate.add_argument("--force", action="store_true", help="overwrite an existing file")
    _output_flag(generate, formats=("json", "yaml"))

    agent_commands.add_commands(command)
    health.add_commands(command)

    version = command("version", commands.cmd_version, "print client and server versions")
    version.add_argument("--client", action="store_true", help="client version only")
    _output_flag(version)
    return parser


def run(argv: Sequence[str], *, stdout: TextIO, stderr: TextIO) -> int:
    """Run one command line; returns the exit status."""
    parser = build_parser()
    try:
        # argparse prints usage and --help itself; send that to the streams we were given.
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            options = parser.parse_args(list(argv))
    except SystemExit as stop:
        return int(stop.code or 0)
    handler: Handler = options.handler
    context = commands.Context(options, stdout=stdout, stderr=stderr)
    try:
        return handler(context)
    except PluginError as error:
        stderr.write(f"error: {error.message}\n")
        return error.exit_code
    except KeyboardInterrupt:
        stderr.write("interrupted\n")
        return 130


def main() -> int:
    """Console-script entry point (``kubectl-agentauth``)."""
    return run(sys.argv[1:], stdout=sys.stdout, stderr=sys.stderr)
