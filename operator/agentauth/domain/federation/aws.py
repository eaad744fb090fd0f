"""AWS workload federation: validation of a signed ``sts:GetCallerIdentity`` request (pure).

The model is Vault's IAM auth method. The agent signs (SigV4) a ``GetCallerIdentity`` POST
with its own AWS credentials and hands us the *request*, never the credentials; we forward it
to AWS STS, which checks the signature and tells us who signed it.

What this module guarantees before anything is forwarded (every failure raises a typed
``agentauth.domain.errors.OAuthError``, never returns a bool):

- the subject token is base64url JSON of exactly ``method``, ``url``, ``headers``, ``body``,
  bounded in size, with string values and no duplicate (case-insensitive) header names;
- the URL is an allowed STS endpoint by *exact* host match (``sts.amazonaws.com``,
  ``sts.<region>.amazonaws.com``, ``sts.cn-*.amazonaws.com.cn``) over https with no port, or
  exactly the one configured test endpoint; no userinfo, no query, no fragment, path ``/``. The
  URL that is forwarded is rebuilt from the validated parts, never the caller's string, so no
  parser differential can redirect the request (SSRF);
- the method is ``POST``; the form body is parsed strictly and holds only
  ``Action=GetCallerIdentity`` and ``Version=2011-06-15``;
- the ``Authorization`` header is a well-formed SigV4 header for service ``sts`` whose
  ``SignedHeaders`` include ``host``, ``x-amz-date``, ``x-agentauth-server-id`` and
  ``x-agentauth-key-thumbprint``;
- ``X-Amz-Date`` agrees with the credential scope date, is at most ``clockskew.LEEWAY_SECONDS``
  in the future and at most ``MAX_REQUEST_AGE`` (+ leeway) old: the SDK signs a fresh request
  for every exchange, so nothing needs STS's own 15-minute window;
- ``X-AgentAuth-Server-ID`` is present once and equal to our issuer, so a request signed for
  another server (or for us, replayed elsewhere) cannot be used here;
- ``X-AgentAuth-Key-Thumbprint`` is present once and equal to ``signer_jkt``, the RFC 7638
  thumbprint of the key whose RFC 9421 signature over the token request verified; the issued
  token is bound to that key. A captured signed request is therefore worth nothing without that
  private key: presented with any other key (at any token-service replica) it is refused before
  anything is forwarded, and replayed with its original signature it yields a token only the
  original holder can use.

The signature itself is checked by STS (it needs the secret key); a replay cache keyed by the
signature (``ReplayCache``) makes each signed request usable once per replica, as defence in
depth behind the key binding.
The STS answer is parsed by ``parse_caller_identity`` and an assumed-role ARN is mapped to its
IAM role ARN by ``role_arn_from_caller_arn``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import hmac
import json
import re
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any, Protocol
from xml.etree import ElementTree

from agentauth.domain import clockskew, errors, strictjson

SUBJECT_TOKEN_TYPE = "urn:agentauth:params:token-type:aws-signed-request"
SERVER_ID_HEADER = "X-AgentAuth-Server-ID"
KEY_THUMBPRINT_HEADER = "X-AgentAuth-Key-Thumbprint"
MAX_REQUEST_AGE = datetime.timedelta(seconds=60)
"""How old a signed ``GetCallerIdentity`` may be (plus the shared leeway)."""
_LEEWAY = datetime.timedelta(seconds=clockskew.LEEWAY_SECONDS)
# A botocore-signed GetCallerIdentity with a session token is about 2-3 KiB once encoded; 16 KiB
# leaves room for long session tokens while bounding the work done on garbage.
MAX_SUBJECT_TOKEN_CHARS = 16 * 1024
MAX_BODY_CHARS = 1024
MAX_HEADERS = 32
STS_API_VERSION = "2011-06-15"
STS_XML_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"

_REGION = r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}"
# Exact host allow-list, as patterns anchored at both ends (fullmatch): the global endpoint, a
# regional endpoint, and the China partition's regional endpoints.
_STS_HOST = re.compile(
    rf"sts\.amazonaws\.com|sts\.{_REGION}\.amazonaws\.com|sts\.cn-(?:[a-z]+-)+\d{{1,2}}\.amazonaws\.com\.cn"
)
_URL_CHARS = re.compile(r"[!-~]+")  # printable ASCII, no space, no control characters
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_HEADER_VALUE = re.compile(r"[\t -~]*")  # no CR/LF/NUL: no header injection
_FORM_FIELD = r"[A-Za-z0-9._~%+-]+=[A-Za-z0-9._~%+-]*"
_FORM_BODY = re.compile(rf"{_FORM_FIELD}(?:&{_FORM_FIELD})*")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 "
    r"Credential=(?P<akid>[A-Z0-9]{16,128})/(?P<date>\d{8})/(?P<region>[a-z0-9-]{1,32})"
    r"/(?P<service>[a-z0-9-]{1,32})/aws4_request, ?"
    r"SignedHeaders=(?P<signed>[a-z0-9-]+(?:;[a-z0-9-]+)*), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})"
)
# Hop-by-hop and framing headers are the HTTP client's business; a caller-supplied one could
# smuggle a second request or change framing, so they are refused outright.
_FORBIDDEN_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
_REQUIRED_SIGNED_HEADERS = (
    "host",
    "x-amz-date",
    SERVER_ID_HEADER.lower(),
    KEY_THUMBPRINT_HEADER.lower(),
)

# arn:<partition>:sts::<account>:assumed-role/<role name>/<session name>. STS drops the role's
# path from assumed-role ARNs, so the role name is the last segment before the session.
_ASSUMED_ROLE_ARN = re.compile(
    r"arn:(?P<partition>aws|aws-cn|aws-us-gov):sts::(?P<account>\d{12}):assumed-role/"
    r"(?P<role>[\w+=,.@-]{1,64})/(?P<session>[\w+=,.@-]{2,64})"
)
_IAM_ROLE_ARN = re.compile(
    r"arn:(?P<partition>aws|aws-cn|aws-us-gov):iam::(?P<account>\d{12}):role/"
    r"(?P<path>(?:[!-~]+/)?)(?P<role>[\w+=,.@-]{1,64})"
)
_ACCOUNT_ID = re.compile(r"\d{12}")


@dataclasses.dataclass(frozen=True)
class SignedStsRequest:
    """A validated ``GetCallerIdentity`` request, ready to forward byte for byte.

    ``url`` is rebuilt from validated parts; ``headers`` excludes ``Host`` and
    ``Content-Length`` (the HTTP client derives both from ``url`` and ``body``, and both are
    covered by the signature, so STS rejects any disagreement).
    """

    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    signature: str
    access_key_id: str
    signed_at: datetime.datetime

    @property
    def replay_key(self) -> str:
        """The replay-cache key: the SigV4 signature, unique per signed request."""
        return self.signature

    @property
    def replay_expires_at(self) -> datetime.datetime:
        """After this instant the date check rejects the request, so the cache may forget it."""
        return self.signed_at + MAX_REQUEST_AGE + _LEEWAY


@dataclasses.dataclass(frozen=True)
class CallerIdentity:
    """What STS said about the signer: its ARN, account and the IAM role ARN it maps to."""

    arn: str
    account_id: str
    user_id: str
    role_arn: str


class ReplayCache(Protocol):
    """Remembers replay keys until they expire.

    ``remember`` raises ``errors.InvalidGrant`` when ``key`` was already seen and has not
    expired; it records the key otherwise. Implementations must make check-and-record atomic.
    """

    def remember(self, key: str, *, expires_at: datetime.datetime, now: datetime.datetime) -> None:
        """Record ``key`` or raise ``errors.InvalidGrant`` if it is already recorded."""

    def forget(self, key: str) -> None:
        """Drop ``key``: STS refused the request, so replaying it gains nothing."""


class InMemoryReplayCache:
    """A bounded, thread-safe in-process ``ReplayCache``.

    Per process only: with several token-service replicas a request replayed against another
    replica is not caught here (STS itself does not dedupe either); the key-thumbprint binding
    makes such a replay useless (see the module docstring). When full of live entries it refuses
    new requests (fail closed) rather than forgetting live ones.
    """

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._max_entries = max_entries
        self._expiry_by_key: dict[str, datetime.datetime] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._expiry_by_key)

    def remember(self, key: str, *, expires_at: datetime.datetime, now: datetime.datetime) -> None:
        with self._lock:
            seen_until = self._expiry_by_key.get(key)
            if seen_until is not None and seen_until > now:
                raise errors.InvalidGrant("the AWS signed request has already been used")
            if len(self._expiry_by_key) >= self._max_entries:
                self._expiry_by_key = {k: v for k, v in self._expiry_by_key.items() if v > now}
            if len(self._expiry_by_key) >= self._max_entries:
                raise errors.TemporarilyUnavailable(
                    "too many AWS signed requests in the last minute; retry later"
                )
            self._expiry_by_key[key] = expires_at

    def forget(self, key: str) -> None:
        with self._lock:
            self._expiry_by_key.pop(key, None)


def decode_subject_token(token: str) -> dict[str, Any]:
    """Decode the base64url JSON envelope; raise ``InvalidRequest`` if it is not one."""
    if len(token) > MAX_SUBJECT_TOKEN_CHARS:
        raise errors.InvalidRequest(
            f"the AWS signed request is larger than {MAX_SUBJECT_TOKEN_CHARS} characters"
        )
    if not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", token):
        raise errors.InvalidRequest("the AWS signed request is not base64url")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        envelope = strictjson.loads(raw)
    except (binascii.Error, ValueError):
        raise errors.InvalidRequest(
            "the AWS signed request is not base64url-encoded JSON"
        ) from None
    if not isinstance(envelope, dict) or set(envelope) != {"method", "url", "headers", "body"}:
        raise errors.InvalidRequest(
            "the AWS signed request must be a JSON object with exactly the keys "
            "method, url, headers and body"
        )
    if not all(isinstance(envelope[key], str) for key in ("method", "url", "body")):
        raise errors.InvalidRequest("the AWS signed request's method, url and body must be strings")
    headers = envelope["headers"]
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise errors.InvalidRequest(
            "the AWS signed request's headers must be an object of string values"
        )
    return envelope


def encode_subject_token(*, method: str, url: str, headers: Mapping[str, str], body: str) -> str:
    """The inverse of ``decode_subject_token`` (used by the SDK and by tests)."""
    envelope = {"method": method, "url": url, "headers": dict(headers), "body": body}
    raw = json.dumps(envelope, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def normalize_test_endpoint(endpoint: str) -> str:
    """Canonical form of the configured STS test endpoint: ``scheme://host[:port]/``.

    Raises ``ValueError`` for anything but an http(s) origin with an empty or ``/`` path, so a
    misconfiguration fails at start-up, not at the first exchange.
    """
    parts = urllib.parse.urlsplit(endpoint)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or "@" in parts.netloc
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ValueError(
            f"the AWS STS test endpoint must be an http(s) origin such as "
            f"'http://127.0.0.1:8080/', got {endpoint!r}"
        )
    return f"{parts.scheme}://{parts.netloc.lower()}/"


def _validated_url(url: str, *, test_endpoint: str | None) -> str:
    if len(url) > 2048 or not _URL_CHARS.fullmatch(url) or "\\" in url:
        raise errors.InvalidGrant("the AWS signed request's URL is malformed")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise errors.InvalidGrant("the AWS signed request's URL is malformed") from None
    if "@" in parts.netloc:
        raise errors.InvalidGrant("the AWS signed request's URL must not contain userinfo")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise errors.InvalidGrant("the AWS signed request's URL must not have a query or fragment")
    if parts.path != "/":
        raise errors.InvalidGrant("the AWS signed request's URL path must be '/'")
    canonical = f"{parts.scheme.lower()}://{parts.netloc.lower()}/"
    if test_endpoint is not None and hmac.compare_digest(canonical, test_endpoint):
        return canonical
    host = parts.hostname or ""
    if not _STS_HOST.fullmatch(host):
        raise errors.InvalidGrant(
            f"the AWS signed request's URL host {host!r} is not an allowed AWS STS endpoint"
        )
    if parts.scheme.lower() != "https":
        raise errors.InvalidGrant("the AWS signed request's URL must use https")
    if port is not None:
        raise errors.InvalidGrant("the AWS signed request's URL must not name a port")
    return f"https://{host}/"


def _validated_body(body: str) -> bytes:
    if len(body) > MAX_BODY_CHARS:
        raise errors.InvalidGrant("the AWS signed request's body is too large")
    if not _FORM_BODY.fullmatch(body):
        raise errors.InvalidGrant("the AWS signed request's body is not a well-formed form body")
    try:
        pairs = urllib.parse.parse_qsl(
            body, keep_blank_values=True, strict_parsing=True, max_num_fields=4
        )
    except ValueError:
        raise errors.InvalidGrant(
            "the AWS signed request's body is not a well-formed form body"
        ) from None
    fields = dict(pairs)
    if len(fields) != len(pairs):
        raise errors.InvalidGrant("the AWS signed request's body repeats a parameter")
    if fields.get("Action") != "GetCallerIdentity":
        raise errors.InvalidGrant("only the AWS STS action GetCallerIdentity is accepted")
    if fields != {"Action": "GetCallerIdentity", "Version": STS_API_VERSION}:
        raise errors.InvalidGrant(
            f"the AWS signed request's body must be exactly Action=GetCallerIdentity and "
            f"Version={STS_API_VERSION}"
        )
    return body.encode("ascii")


def validate_signed_request(
    envelope: Mapping[str, Any],
    *,
    issuer: str,
    now: datetime.datetime,
    signer_jkt: str | None,
    test_endpoint: str | None = None,
) -> SignedStsRequest:
    """Check a decoded envelope against every rule in the module docstring.

    ``signer_jkt`` is the thumbprint of the key that signed the token request (``None`` when it
    is unsigned, which is refused). ``test_endpoint`` must already be normalised by
    ``normalize_test_endpoint``. ``now`` must be timezone-aware.
    """
    if envelope["method"] != "POST":
        raise errors.InvalidGrant("the AWS signed request's method must be POST")
    url = _validated_url(envelope["url"], test_endpoint=test_endpoint)
    body = _validated_body(envelope["body"])

    raw_headers: Mapping[str, str] = envelope["headers"]
    if len(raw_headers) > MAX_HEADERS:
        raise errors.InvalidGrant("the AWS signed request has too many headers")
    by_lower_name: dict[str, str] = {}
    forwarded: list[tuple[str, str]] = []
    for name, value in raw_headers.items():
        lower = name.lower()
        if not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
            raise errors.InvalidGrant("the AWS signed request has a malformed header")
        if lower in by_lower_name:
            raise errors.InvalidGrant(f"the AWS signed request repeats the header {name!r}")
        if lower in _FORBIDDEN_HEADERS:
            raise errors.InvalidGrant(f"the AWS signed request must not set the header {name!r}")
        by_lower_name[lower] = value
        if lower not in ("host", "content-length"):
            forwarded.append((name, value))

    host_header = by_lower_name.get("host")
    if host_header is not None and host_header.lower() != urllib.parse.urlsplit(url).netloc:
        raise errors.InvalidGrant("the AWS signed request's Host header does not match its URL")
    content_length = by_lower_name.get("content-length")
    if content_length is not None and content_length != str(len(body)):
        raise errors.InvalidGrant("the AWS signed request's Content-Length does not match its body")

    authorization = by_lower_name.get("authorization")
    if authorization is None:
        raise errors.InvalidGrant("the AWS signed request has no Authorization header")
    match = _AUTHORIZATION.fullmatch(authorization)
    if match is None:
        raise errors.InvalidGrant(
            "the AWS signed request's Authorization header is not a SigV4 signature"
        )
    if match["service"] != "sts":
        raise errors.InvalidGrant("the AWS signed request is not signed for the sts service")
    for header in (SERVER_ID_HEADER, KEY_THUMBPRINT_HEADER):
        if header.lower() not in by_lower_name:
            raise errors.InvalidGrant(f"the AWS signed request has no {header} header")
    signed_headers = match["signed"].split(";")
    if len(set(signed_headers)) != len(signed_headers):
        raise errors.InvalidGrant("the AWS signed request's SignedHeaders repeats a header")
    for required in _REQUIRED_SIGNED_HEADERS:
        if required not in signed_headers:
            raise errors.InvalidGrant(
                f"the AWS signed request does not sign the {required!r} header"
            )
    for name in signed_headers:
        if name != "host" and name not in by_lower_name:
            raise errors.InvalidGrant(
                f"the AWS signed request signs the header {name!r} but does not send it"
            )

    server_id = by_lower_name[SERVER_ID_HEADER.lower()]
    if not hmac.compare_digest(server_id.encode(), issuer.encode()):
        raise errors.InvalidGrant(
            f"the AWS signed request's {SERVER_ID_HEADER} header does not name this issuer"
        )
    thumbprint = by_lower_name[KEY_THUMBPRINT_HEADER.lower()]
    if signer_jkt is None:
        raise errors.InvalidGrant(
            "the token request must be signed (RFC 9421) by the key the AWS signed request "
            f"names in {KEY_THUMBPRINT_HEADER}"
        )
    if not hmac.compare_digest(thumbprint.encode(), signer_jkt.encode()):
        raise errors.InvalidGrant(
            "the token request is not signed by the key the AWS signed request names in "
            f"{KEY_THUMBPRINT_HEADER}"
        )

    amz_date = by_lower_name["x-amz-date"]
    if not _AMZ_DATE.fullmatch(amz_date):
        raise errors.InvalidGrant("the AWS signed request's X-Amz-Date is malformed")
    try:
        signed_at = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.UTC
        )
    except ValueError:
        raise errors.InvalidGrant("the AWS signed request's X-Amz-Date is malformed") from None
    if amz_date[:8] != match["date"]:
        raise errors.InvalidGrant(
            "the AWS signed request's X-Amz-Date does not match its credential scope"
        )
    if signed_at > now + _LEEWAY:
        raise errors.InvalidGrant("the AWS signed request's X-Amz-Date is in the future")
    if now - signed_at > MAX_REQUEST_AGE + _LEEWAY:
        raise errors.InvalidGrant(
            "the AWS signed request's X-Amz-Date is more than "
            f"{int(MAX_REQUEST_AGE.total_seconds())} seconds old; sign a fresh request for each "
            "exchange"
        )

    return SignedStsRequest(
        url=url,
        headers=tuple(forwarded),
        body=body,
        signature=match["signature"],
        access_key_id=match["akid"],
        signed_at=signed_at,
    )


def role_arn_from_caller_arn(arn: str) -> str:
    """Map STS's assumed-role ARN to the IAM role ARN; refuse every other principal type.

    ``arn:aws:sts::123456789012:assumed-role/NAME/SESSION`` ->
    ``arn:aws:iam::123456789012:role/NAME``. STS leaves the role's path out of assumed-role
    ARNs, so the result never has a path; ``role_arn_matches`` compares configured ARNs with
    paths by account and name (IAM role names are unique within an account, whatever the
    path). IAM users, root and federated users are refused: they are static-credential
    principals, which this federation exists to avoid.
    """
    match = _ASSUMED_ROLE_ARN.fullmatch(arn)
    if match is None:
        raise errors.InvalidGrant(
            f"the AWS caller {arn!r} is not an assumed IAM role; only IAM roles can be federated"
        )
    return f"arn:{match['partition']}:iam::{match['account']}:role/{match['role']}"


def role_arn_matches(role_arn: str, pattern: str) -> bool:
    """Whether the path-less IAM role ARN ``role_arn`` is admitted by a configured pattern.

    A pattern is an IAM role ARN, optionally with ``*`` wildcards; a ``*`` matches any run of
    characters within one ARN field or path segment (never ``:`` or ``/``), so
    ``arn:aws:iam::123456789012:role/*`` admits every role of that account and nothing else. A
    pattern with a role path and no wildcard is compared by account and role name (IAM role
    names are unique within an account, whatever the path). A pattern with a path *and* a
    wildcard never matches: STS does not reveal the path, so the restriction it expresses
    cannot be checked (fail closed).
    """
    if "*" not in pattern:
        parsed = _IAM_ROLE_ARN.fullmatch(pattern)
        if parsed is None:
            return False
        path_less = f"arn:{parsed['partition']}:iam::{parsed['account']}:role/{parsed['role']}"
        return hmac.compare_digest(path_less, role_arn)
    _, _, resource = pattern.partition(":role/")
    if "/" in resource:
        return False
    regex = "[^:/]*".join(re.escape(piece) for piece in pattern.split("*"))
    return re.fullmatch(regex, role_arn) is not None


def parse_caller_identity(body: bytes, *, content_type: str) -> CallerIdentity:
    """Parse STS's ``GetCallerIdentity`` answer (XML, or JSON when asked for it)."""
    fields: dict[str, str]
    if "json" in content_type.lower():
        fields = _json_caller_identity(body)
    else:
        fields = _xml_caller_identity(body)
    arn, account, user_id = fields.get("Arn"), fields.get("Account"), fields.get("UserId", "")
    if not arn or not account or not _ACCOUNT_ID.fullmatch(account):
        raise errors.InvalidGrant("AWS STS answered without a caller ARN and account")
    role_arn = role_arn_from_caller_arn(arn)
    if role_arn.split(":")[4] != account:
        raise errors.InvalidGrant("AWS STS answered an ARN outside the caller's account")
    return CallerIdentity(arn=arn, account_id=account, user_id=user_id, role_arn=role_arn)


def _json_caller_identity(body: bytes) -> dict[str, str]:
    try:
        document = strictjson.loads(body)
        result = document["GetCallerIdentityResponse"]["GetCallerIdentityResult"]
    except (ValueError, KeyError, TypeError):
        raise errors.InvalidGrant(
            "AWS STS answered an unreadable GetCallerIdentity response"
        ) from None
    if not isinstance(result, dict):
        raise errors.InvalidGrant("AWS STS answered an unreadable GetCallerIdentity response")
    return {k: v for k, v in result.items() if isinstance(v, str)}


def _xml_caller_identity(body: bytes) -> dict[str, str]:
    # The answer comes from an allow-listed STS host and is size-bounded by the caller; entity
    # declarations are still refused so no expansion can happen whatever the expat version.
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise errors.InvalidGrant("AWS STS answered an unreadable GetCallerIdentity response")
    try:
        root = ElementTree.fromstring(body)  # noqa: S314 - DTDs refused above, size bounded
    except ElementTree.ParseError:
        raise errors.InvalidGrant(
            "AWS STS answered an unreadable GetCallerIdentity response"
        ) from None
    ns = {"sts": STS_XML_NAMESPACE}
    result = root.find("sts:GetCallerIdentityResult", ns)
    if root.tag != f"{{{STS_XML_NAMESPACE}}}GetCallerIdentityResponse" or result is None:
        raise errors.InvalidGrant("AWS STS answered an unreadable GetCallerIdentity response")
    fields: dict[str, str] = {}
    for name in ("Arn", "Account", "UserId"):
        element = result.find(f"sts:{name}", ns)
        if element is not None and element.text:
            fields[name] = element.text.strip()
    return fields
