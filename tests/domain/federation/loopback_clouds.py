"""Loopback stand-ins for AWS STS and the GCP metadata and certificate endpoints.

They do the real checks, not canned answers:

- ``LoopbackSts`` recomputes every SigV4 signature with botocore's own signer from the request
  *as received* (only the headers listed in ``SignedHeaders``, the received body and Host) and
  the test secret key, and refuses a mismatch with ``SignatureDoesNotMatch`` like AWS does, so
  tampering with anything signed is caught by the same check AWS makes. It also refuses a
  stale ``X-Amz-Date`` and any action but ``GetCallerIdentity``.
- ``LoopbackGoogle`` serves X.509 certificates for a test RSA key in the format of Google's
  ``/oauth2/v1/certs`` and a metadata server that mints RS256 ID tokens with google-auth's own
  signer, demanding ``Metadata-Flavor: Google``.

Both are stdlib ``ThreadingHTTPServer``s on 127.0.0.1 in a daemon thread, so synchronous
(requests, google-auth) and asynchronous (aiohttp) clients can use them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hmac
import http.server
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import botocore.auth
import botocore.awsrequest
import botocore.credentials
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt
from google.auth import jwt as google_jwt

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<akid>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[^,]+), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})"
)
STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"


@dataclasses.dataclass
class AwsPrincipal:
    """A test credential and what STS answers for it (``behaviour`` bends the answer)."""

    access_key_id: str
    secret_access_key: str
    arn: str
    account: str
    behaviour: str = "normal"  # normal | redirect | huge | error500


def _error_xml(code: str, message: str) -> bytes:
    return (
        f'<ErrorResponse xmlns="{STS_NS}"><Error><Type>Sender</Type><Code>{code}</Code>'
        f"<Message>{message}</Message></Error><RequestId>test</RequestId></ErrorResponse>"
    ).encode()


def _caller_identity_xml(principal: AwsPrincipal) -> bytes:
    return (
        f'<GetCallerIdentityResponse xmlns="{STS_NS}"><GetCallerIdentityResult>'
        f"<Arn>{principal.arn}</Arn><UserId>AROATEST:session</UserId>"
        f"<Account>{principal.account}</Account></GetCallerIdentityResult>"
        f"<ResponseMetadata><RequestId>test</RequestId></ResponseMetadata>"
        f"</GetCallerIdentityResponse>"
    ).encode()


class LoopbackSts:
    """An STS endpoint on loopback that verifies SigV4 with botocore's signer."""

    def __init__(self) -> None:
        self.principals: dict[str, AwsPrincipal] = {}
        self.requests_received = 0
        self.lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def add(self, principal: AwsPrincipal) -> AwsPrincipal:
        self.principals[principal.access_key_id] = principal
        return principal

    def verify(
        self, *, headers: dict[str, str], body: bytes, path: str
    ) -> tuple[int, bytes, dict[str, str]]:
        """The answer AWS would give: (status, body, extra headers)."""
        authorization = _AUTHORIZATION.fullmatch(headers.get("authorization", ""))
        if authorization is None:
            return 403, _error_xml("IncompleteSignature", "no SigV4 Authorization"), {}
        principal = self.principals.get(authorization["akid"])
        if principal is None:
            return 403, _error_xml("InvalidClientTokenId", "unknown access key"), {}
        amz_date = headers.get("x-amz-date", "")
        signed_at = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.UTC
        )
        if abs(datetime.datetime.now(datetime.UTC) - signed_at) > datetime.timedelta(minutes=15):
            return 403, _error_xml("SignatureDoesNotMatch", "Signature expired"), {}
        signed_names = authorization["signed"].split(";")
        if any(name not in headers for name in signed_names):
            return 403, _error_xml("SignatureDoesNotMatch", "signed header missing"), {}
        request = botocore.awsrequest.AWSRequest(
            method="POST",
            url=f"http://{headers['host']}{path}",
            data=body,
            headers={name: headers[name] for name in signed_names},
        )
        request.context["timestamp"] = amz_date
        signer = botocore.auth.SigV4Auth(
            botocore.credentials.Credentials(principal.access_key_id, principal.secret_access_key),
            authorization["service"],
            authorization["region"],
        )
        canonical_request = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical_request), request)
        if not hmac.compare_digest(expected, authorization["signature"]):
            return 403, _error_xml("SignatureDoesNotMatch", "signature mismatch"), {}
        form = dict(urllib.parse.parse_qsl(body.decode()))
        if form.get("Action") != "GetCallerIdentity":
            return 400, _error_xml("InvalidAction", "not GetCallerIdentity"), {}
        if principal.behaviour == "redirect":
            return 302, b"", {"Location": "http://169.254.169.254/latest/meta-data/"}
        if principal.behaviour == "huge":
            return 200, b"<" + b"x" * (256 * 1024) + b"/>", {}
        if principal.behaviour == "error500":
            return 500, _error_xml("InternalFailure", "oops"), {}
        return 200, _caller_identity_xml(principal), {"Content-Type": "text/xml"}

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        sts = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                with sts.lock:
                    sts.requests_received += 1
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                status, answer, extra = sts.verify(headers=headers, body=body, path=self.path)
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


GET_CALLER_IDENTITY = "Action=GetCallerIdentity&Version=2011-06-15"
KEY_THUMBPRINT = "kbNlbH3cDLIq2fwSn1xOZq2hbnzvB9qoNeoXjAhKxw8"
"""The RFC 7638 thumbprint a test's token request is signed with (signed into the request)."""


def signed_sts_token(
    principal: AwsPrincipal,
    *,
    url: str,
    issuer: str | None,
    body: str = GET_CALLER_IDENTITY,
    method: str = "POST",
    region: str = "us-east-1",
    at: datetime.datetime | None = None,
    extra_headers: dict[str, str] | None = None,
    key_thumbprint: str | None = KEY_THUMBPRINT,
) -> dict[str, Any]:
    """A request signed by botocore's SigV4 signer, as a decoded subject-token envelope.

    ``issuer`` ``None`` leaves the server-ID header out of the signature, ``key_thumbprint``
    ``None`` the key-thumbprint header. ``at`` signs at another instant (botocore's ``add_auth``
    always uses now), through the same signer steps.
    """
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    if issuer is not None:
        headers["X-AgentAuth-Server-ID"] = issuer
    if key_thumbprint is not None:
        headers["X-AgentAuth-Key-Thumbprint"] = key_thumbprint
    headers.update(extra_headers or {})
    request = botocore.awsrequest.AWSRequest(method=method, url=url, data=body, headers=headers)
    signer = botocore.auth.SigV4Auth(
        botocore.credentials.Credentials(principal.access_key_id, principal.secret_access_key),
        "sts",
        region,
    )
    if at is None:
        signer.add_auth(request)
    else:
        request.context["timestamp"] = at.strftime(botocore.auth.SIGV4_TIMESTAMP)
        signer._modify_request_before_signing(request)
        canonical_request = signer.canonical_request(request)
        signature = signer.signature(signer.string_to_sign(request, canonical_request), request)
        signer._inject_signature_to_request(request, signature)
    return {"method": method, "url": url, "headers": dict(request.headers.items()), "body": body}


@dataclasses.dataclass
class GoogleKey:
    kid: str
    private_pem: bytes
    certificate_pem: str

    def signer(self) -> crypt.RSASigner:
        return crypt.RSASigner.from_string(self.private_pem, key_id=self.kid)


def make_google_key(kid: str) -> GoogleKey:
    """An RSA key and a self-signed certificate, as Google publishes its ID-token keys."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "securetoken.system.gserviceaccount.com")]
    )
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return GoogleKey(
        kid=kid,
        private_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
    )


def google_id_token(key: GoogleKey, **claims: Any) -> str:
    """An ID token like the metadata server's (format=full), signed RS256 by google-auth."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": "https://accounts.google.com",
        "azp": "113374962155467358263",
        "sub": "113374962155467358263",
        "email": "agent@research-prod.iam.gserviceaccount.com",
        "email_verified": True,
        "iat": now,
        "exp": now + 3600,
        "google": {
            "compute_engine": {
                "project_id": "research-prod",
                "project_number": 123456789,
                "zone": "europe-west1-b",
                "instance_id": "42",
                "instance_name": "agent-vm",
            }
        },
    }
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    return google_jwt.encode(key.signer(), payload).decode()


class LoopbackGoogle:
    """Google's certs endpoint and a GCE metadata server, on one loopback port."""

    def __init__(self, key: GoogleKey) -> None:
        self.published_keys: list[GoogleKey] = [key]
        self.signing_key = key
        self.certs_fetches = 0
        self.metadata_claims: dict[str, Any] = {}
        self.metadata_requests: list[dict[str, str]] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.certs_url = f"http://{self.host}/oauth2/v1/certs"

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        google = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/oauth2/v1/certs":
                    google.certs_fetches += 1
                    certs = {k.kid: k.certificate_pem for k in google.published_keys}
                    self._answer(
                        200,
                        json.dumps(certs).encode(),
                        {"Content-Type": "application/json", "Cache-Control": "max-age=300"},
                    )
                    return
                identity = "/computeMetadata/v1/instance/service-accounts/default/identity"
                if url.path == identity:
                    query = dict(urllib.parse.parse_qsl(url.query))
                    google.metadata_requests.append(
                        {"flavor": self.headers.get("Metadata-Flavor", ""), **query}
                    )
                    if self.headers.get("Metadata-Flavor") != "Google":
                        self._answer(403, b"Missing Metadata-Flavor:Google header", {})
                        return
                    claims = {"aud": query.get("audience", "")}
                    if query.get("format") != "full":
                        claims.update({"email": None, "email_verified": None, "google": None})
                    claims.update(google.metadata_claims)
                    token = google_id_token(google.signing_key, **claims)
                    self._answer(200, token.encode(), {"Metadata-Flavor": "Google"})
                    return
                self._answer(404, b"not found", {})

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@contextlib.contextmanager
def serving(server: http.server.ThreadingHTTPServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
