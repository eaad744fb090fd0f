"""``make demo``: agentauth end to end on an embedded control plane, one readable line per step.

What it runs, all real (nothing mocked, nothing skipped):

1. a demo identity provider (a JWKS on loopback; it signs one user's token) that the token
   service is told to trust for delegation;
2. ``agentauth dev`` (embedded control plane, the chart's RBAC and webhooks, controller, token
   service) as a subprocess, waiting for its ``ready`` line;
3. ``kubectl apply`` of ``samples/`` (the Agent, its grants, a ToolServer and a labelled pod, which
   the real webhook mutates) and ``demo/approver-rbac.yaml``, then ``kubectl wait`` for the Agent;
4. a finance tool server on loopback that verifies agent tokens and request signatures with
   ``agentauth.verify``;
5. ``demo/agent.py`` through ``agentauth dev run-as-pod`` (its projected token, its env): exchange,
   Ask API, an allowed call, a refused sensitive one, a just-in-time AccessRequest;
6. the approval, as ``alice``, with ``kubectl agentauth approve`` (the plugin from this
   virtualenv on PATH); the agent then pays and delegates on the user's behalf.

Guarantees: exit 0 only when every step did what it printed; everything it started (processes,
servers, the temporary directory) is stopped and removed on success, failure, Ctrl-C or SIGTERM.
``--keep`` leaves the dev directory for inspection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import yaml
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentauth.domain import signatures
from agentauth.verify import JwksCache, ResourceVerifier
from agentauth.verify import aiohttp as verify_aiohttp

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SAMPLES = ROOT / "samples"
NAMESPACE = "demo"
AGENT = "research-assistant"
TOOL_SERVER_AUDIENCE = "https://finance-tools.demo.svc/mcp"  # samples/05-toolserver.yaml
TOOL_SERVER = "demo/finance-tools"  # the ToolServer the finance server is, same file
USER_AUDIENCE = "urn:agentauth:demo"
USER = "jane@example.com"
READY_TIMEOUT = 60.0
AGENT_TIMEOUT = 50.0
FILED = re.compile(r"filed AccessRequest (?P<namespace>[^/\s]+)/(?P<name>\S+)")


class DemoFailed(Exception):
    """A step did not go as the demo shows it."""


class Output:
    """``[  1.2s] who     message`` lines, so the steps read as one story."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def line(self, who: str, message: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f}s] {who:<6} {message}", flush=True)


# -- servers on a background event loop ---------------------------------------------------------


class Servers:
    """The demo identity provider and the finance tool server, on one background loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="demo")
        self.runners: list[web.AppRunner] = []
        self.user_key = ed25519.Ed25519PrivateKey.generate()
        self.user_kid = signatures.jwk_thumbprint(signatures.public_jwk(self.user_key))
        self.idp_url = ""
        self.payments = 0

    def start(self) -> None:
        self.thread.start()
        self.idp_url = self.call(self._serve(self._idp_app()))

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    async def _serve(self, app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        async def cleanup() -> None:
            for runner in self.runners:
                await runner.cleanup()

        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                self.call(cleanup())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        self.loop.close()

    # The identity provider: publishes its key; the runner signs the user's token with it.
    # (A real IdP serves its JWKS over HTTPS; on loopback, for a demo, plain HTTP does.)
    def _idp_app(self) -> web.Application:
        jwk = {**signatures.public_jwk(self.user_key), "kid": self.user_kid, "alg": "EdDSA"}

        async def jwks(_: web.Request) -> web.Response:
            return web.json_response({"keys": [jwk]})

        app = web.Application()
        app.router.add_get("/jwks", jwks)
        return app

    def user_token(self, *, may_act: str) -> str:
        """The user's token; ``may_act`` names the agent the user lets act on their behalf."""
        now = int(time.time())
        claims = {
            "iss": self.idp_url,
            "sub": USER,
            "aud": USER_AUDIENCE,
            "iat": now,
            "exp": now + 600,
            "scope": "document.read document.search",
            "may_act": {"sub": may_act},
        }
        return jwt.encode(claims, self.user_key, algorithm="EdDSA", headers={"kid": self.user_kid})

    def trusted_issuers(self) -> str:
        return json.dumps(
            [
                {
                    "issuer": self.idp_url,
                    "jwks_url": f"{self.idp_url}/jwks",
                    "audience": USER_AUDIENCE,
                }
            ]
        )

    # The finance tool server: every request verified by agentauth.verify.
    def start_tool_server(self, *, issuer: str, ca_file: Path) -> str:
        async def build() -> str:
            verifier = ResourceVerifier(
                issuer=issuer,
                audience=TOOL_SERVER_AUDIENCE,
                # Tokens must name this ToolServer: one another namespace creates with the same
                # resourceURI gets tokens this server refuses.
                tool_server=TOOL_SERVER,
                jwks=JwksCache(jwks_url=f"{issuer}/jwks", ca_file=str(ca_file)),
            )

            def required(request: web.Request) -> list[str]:
                if request.path.startswith("/payments"):
                    return ["payments.authorize"]
                return ["document.read"]

            async def document(request: web.Request) -> web.Response:
                principal = verify_aiohttp.principal_of(request)
                chain = principal.actor_chain
                return web.json_response(
                    {
                        "title": f"{request.match_info['name']}: Q3 budget, finance department",
                        "read_for": principal.subject,
                        "actor": chain[0] if chain else principal.subject,
                    }
                )

            async def pay(request: web.Request) -> web.Response:
                self.payments += 1
                body = await request.json()
                return web.json_response(
                    {"payment": f"PAY-{self.payments:04d}", "invoice": body.get("invoice")}
                )

            app = web.Application(
                middlewares=[verify_aiohttp.middleware(verifier, requirements=required)]
            )
            app.router.add_get("/documents/{name}", document)
            app.router.add_post("/payments", pay)
            return await self._serve(app)

        url: str = self.call(build())
        return url


# -- processes ---------------------------------------------------------------------------------


class LineReader:
    """A subprocess's stdout, line by line, with deadlines."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None  # noqa: S101 - started with stdout=PIPE
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next(self, deadline: float) -> str | None:
        """The next line; ``None`` at end of output; ``DemoFailed`` at the deadline."""
        try:
            return self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise DemoFailed("timed out waiting for output") from None


def stop_process(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class Demo:
    def __init__(self, *, workdir: Path, out: Output, cleanup: contextlib.ExitStack) -> None:
        self.workdir = workdir
        self.out = out
        self.cleanup = cleanup
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.env.pop("AGENTAUTH_CA_FILE", None)
        self.kubeconfig = Path()
        self.agent_id = ""  # the Agent's identifier, once it is Ready

    def kubectl(self, *args: str, user: str | None = "admin", input: str | None = None) -> str:
        """Real kubectl as ``user`` (a dev kubeconfig context); ``None`` for plugin commands,
        which take their flags after the plugin's name."""
        context = ["--context", user] if user else []
        result = subprocess.run(  # noqa: S603 - our own venv binaries, fixed argv
            [str(BIN / "kubectl"), *context, *args],
            capture_output=True,
            text=True,
            input=input,
            env=self.env,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise DemoFailed(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def start_dev(self, servers: Servers) -> dict[str, str]:
        self.out.line(
            "runner",
            "starting agentauth dev (API server, chart RBAC + webhooks, controller, token service)",
        )
        stderr = (self.workdir / "dev.stderr").open("w")
        self.cleanup.callback(stderr.close)
        process = subprocess.Popen(  # noqa: S603 - our own venv binaries, fixed argv
            [
                str(BIN / "agentauth"),
                "dev",
                "--dir",
                str(self.workdir / "dev"),
                "--trusted-issuers",
                servers.trusted_issuers(),
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=self.env,
        )
        self.cleanup.callback(stop_process, process)
        reader = LineReader(process)
        deadline = time.monotonic() + READY_TIMEOUT
        found: dict[str, str] = {}
        while True:
            line = reader.next(deadline)
            if line is None:
                log = (self.workdir / "dev.stderr").read_text()[-2000:]
                raise DemoFailed(f"agentauth dev exited with {process.wait()}:\n{log}")
            if line.startswith("ready kubeconfig="):
                found["kubeconfig"] = line.split("=", 1)[1]
            elif line.strip().startswith("issuer: "):
                found["issuer"] = line.split(": ", 1)[1].strip()
            elif line.strip().startswith("dev CA: "):
                found["ca"] = line.split(": ", 1)[1].split()[0]
            if {"kubeconfig", "issuer", "ca"} <= found.keys():
                break
        self.kubeconfig = Path(found["kubeconfig"])
        self.env["KUBECONFIG"] = found["kubeconfig"]
        self.out.line("runner", f"ready: token service and issuer {found['issuer']}")
        return found

    def apply_samples(self) -> None:
        approver_rbac = ROOT / "demo" / "approver-rbac.yaml"
        self.kubectl("apply", "-f", str(SAMPLES), "-f", str(approver_rbac))
        documents = [
            document
            for path in sorted(SAMPLES.glob("*.yaml"))
            for document in yaml.safe_load_all(path.read_text())
            if isinstance(document, dict)
        ]
        kinds = ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in documents)
        self.out.line("runner", f"kubectl apply -f samples/: {kinds}, approver RBAC for alice")
        self.kubectl(
            "wait", "--for=condition=Ready", f"agent/{AGENT}", "-n", NAMESPACE, "--timeout=30s"
        )
        agent = json.loads(self.kubectl("get", "agent", AGENT, "-n", NAMESPACE, "-o", "json"))
        capabilities = ", ".join(
            f"{c['name']}" + (" (approval)" if c.get("approval") == "Required" else "")
            for c in agent["status"]["capabilities"]
        )
        self.agent_id = str(agent["status"]["agentID"])
        self.out.line("runner", f"Agent {AGENT} is Ready: {self.agent_id}: {capabilities}")
        pod = json.loads(self.kubectl("get", "pod", AGENT, "-n", NAMESPACE, "-o", "json"))
        volumes = [v["name"] for v in pod["spec"].get("volumes") or [] if "projected" in v]
        self.out.line(
            "runner", f"pod {AGENT} was mutated by the webhook: projected volume {volumes}"
        )

    def run_agent(self, servers: Servers, *, tool_server: str) -> None:
        env = {
            **self.env,
            "DEMO_RESOURCE_URL": tool_server,
            "DEMO_RESOURCE_AUDIENCE": TOOL_SERVER_AUDIENCE,
            "DEMO_USER_TOKEN": servers.user_token(may_act=self.agent_id),
            "PYTHONUNBUFFERED": "1",
        }
        self.out.line(
            "runner", f"agentauth dev run-as-pod {AGENT} -n {NAMESPACE} -- python demo/agent.py"
        )
        process = subprocess.Popen(  # noqa: S603 - our own venv binaries, fixed argv
            [
                str(BIN / "agentauth"),
                "dev",
                "run-as-pod",
                AGENT,
                "-n",
                NAMESPACE,
                "--",
                sys.executable,
                str(ROOT / "demo" / "agent.py"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.cleanup.callback(stop_process, process)
        reader = LineReader(process)
        deadline = time.monotonic() + AGENT_TIMEOUT
        while (line := reader.next(deadline)) is not None:
            self.out.line("agent", line)
            filed = FILED.search(line)
            if filed:
                self.approve(filed.group("name"), namespace=filed.group("namespace"))
        code = process.wait(timeout=10)
        if code != 0:
            raise DemoFailed(f"the agent exited with {code}")

    def approve(self, name: str, *, namespace: str) -> None:
        printed = self.kubectl(
            "agentauth",
            "approve",
            name,
            "-n",
            namespace,
            "--context",
            "alice",
            "--comment",
            "invoice checked against FIN-482",
            user=None,
        )
        self.out.line("alice", f"kubectl agentauth approve {name}: {printed.strip()}")


@contextlib.contextmanager
def terminated_by_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the cleanup runs."""

    def raise_interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the agentauth demo end to end.")
    parser.add_argument("--keep", action="store_true", help="keep the dev directory afterwards")
    args = parser.parse_args(argv)
    out = Output()
    workdir = Path(tempfile.mkdtemp(prefix=f"agentauth-demo-{uuid.uuid4().hex[:6]}-"))
    try:
        with terminated_by_sigterm(), contextlib.ExitStack() as cleanup:
            if not args.keep:
                cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
            servers = Servers()
            servers.start()
            cleanup.callback(servers.stop)
            out.line(
                "runner", f"working in {workdir}" + ("" if args.keep else " (removed at exit)")
            )
            out.line("runner", f"demo identity provider for {USER} at {servers.idp_url}")
            demo = Demo(workdir=workdir, out=out, cleanup=cleanup)
            found = demo.start_dev(servers)
            demo.apply_samples()
            tool_server = servers.start_tool_server(
                issuer=found["issuer"], ca_file=Path(found["ca"])
            )
            out.line("runner", f"finance tool server ({TOOL_SERVER_AUDIENCE}) at {tool_server}")
            demo.run_agent(servers, tool_server=tool_server)
            out.line("runner", "stopping everything")
    except DemoFailed as failure:
        out.line("runner", f"DEMO FAILED: {failure}")
        return 1
    except KeyboardInterrupt:
        out.line("runner", "interrupted; everything stopped")
        return 130
    out.line(
        "runner",
        "demo finished: every step above ran for real"
        + (f" (dev directory kept: {workdir / 'dev'})" if args.keep else ""),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
