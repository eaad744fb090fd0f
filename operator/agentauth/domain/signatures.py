"""RFC 9421 HTTP Message Signatures (Ed25519) under the AAuth profile, RFC 9530 digests.

An agent signs each request with an Ed25519 key and names that key in the ``Signature-Key``
header (draft-hardt-httpbis-signature-key, as used by AAuth):

- ``Signature-Key: sig=jwt;jwt="<agent token>"`` -- the key is the token's ``cnf.jwk``
  (RFC 7800), so a verifier needs nothing but the token (proof of possession);
- ``Signature-Key: sig=hwk;kty="OKP";crv="Ed25519";x="..."`` -- a bare public key ("header web
  key"), used to sign a token request so that the issued token gets bound to that key.

Signing builds the signature base with the ``http-message-signatures`` library.  Verifying
joins it directly (:mod:`agentauth.domain.signaturebase`) for the plain shapes every signer
emits -- the same bytes, checked against the library by differential tests -- and hands
anything else to the library.  This module decides *what* is covered and *which* key is trusted.

Guarantees of :func:`verify_request`:

- exactly one signature, with the same label in ``Signature-Input``, ``Signature`` and
  ``Signature-Key``; algorithm Ed25519 only (an ``alg`` parameter other than ``ed25519`` fails);
- ``created`` is required, not more than ``MAX_CLOCK_SKEW`` seconds in the future and not more
  than ``max_age`` seconds in the past (relative to the caller's ``now``); ``expires``, when
  present, must not have passed;
- ``keyid`` is optional (RFC 9421 section 2.3); when present it must name the key that
  ``Signature-Key`` carries: its RFC 7638 thumbprint, or the ``kid`` member of its JWK;
- every component in ``required_components`` is covered, and ``content-digest`` is covered and
  matches the body whenever the body is not empty (RFC 9530);
- covered values with CR/LF or control characters are refused (no header injection into the
  signature base), and ``@signature-params`` cannot be covered;
- for ``sig=jwt`` the token must carry ``cnf.jwk`` (Ed25519) and, when present, ``cnf.jkt``
  must equal its RFC 7638 thumbprint.  The token itself is only verified when a
  ``token_verifier`` is passed; otherwise ``VerifiedRequest.token_claims`` is ``None`` and the
  caller MUST verify the token (``agentauth.verify`` always does).

Every failure raises :class:`SignatureError` with a fixed, human-readable ``reason``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import http_message_signatures as hms
import http_sf
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from http_message_signatures.structures import normalize_header_value
from http_sf.compat import InnerList, Item

from agentauth.domain import clockskew, errors, jose, signaturebase

SIGNATURE_LABEL = "sig"
"""The signature label AAuth uses in ``Signature-Input``, ``Signature`` and ``Signature-Key``."""

BASE_COMPONENTS: tuple[str, ...] = ("@method", "@authority", "@path", "signature-key")
"""Components every agentauth signature covers (``content-digest`` is added for a body)."""

MAX_AGE_SECONDS = 60
"""Default validity window for ``created`` (AAuth profile)."""

MAX_CLOCK_SKEW = clockskew.LEEWAY_SECONDS
"""Seconds a ``created`` timestamp may lie in the verifier's future."""

SignatureKeyScheme = Literal["jwt", "hwk"]


class SignatureError(Exception):
    """A request signature is missing, malformed, or does not verify.

    ``reason`` is a fixed description safe to return to the client (it never echoes tokens).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerifiedRequest:
    """The outcome of a successful :func:`verify_request`.

    ``public_jwk``/``jkt`` identify the key that signed the request.  ``token`` is the agent
    token from ``sig=jwt`` (``None`` for ``sig=hwk``); ``token_claims`` are its claims when a
    ``token_verifier`` vouched for them, else ``None``.  ``signature`` is the raw signature,
    usable as a replay-cache key together with ``created``.  ``keyid`` is the signed
    ``keyid`` parameter, ``None`` when the signer left it out (when present it equals ``jkt``).
    """

    scheme: SignatureKeyScheme
    public_jwk: dict[str, str]
    jkt: str
    token: str | None
    token_claims: Mapping[str, Any] | None
    label: str
    keyid: str | None
    created: int
    covered_components: tuple[str, ...]
    replay_id: bytes


# --------------------------------------------------------------------------- keys and JWKs


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint (base64url) of a public JWK."""
    return jose.jwk_thumbprint(jwk)


def public_jwk(key: ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey) -> dict[str, str]:
    """The public OKP/Ed25519 JWK (``kty``, ``crv``, ``x``) for a key."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        key = key.public_key()
    return jose.ed25519_jwk(key)


def ed25519_public_key(jwk: Mapping[str, Any]) -> ed25519.Ed25519PublicKey:
    """Load an Ed25519 public JWK; anything else raises :class:`SignatureError`."""
    if "d" in jwk:
        raise SignatureError("signing key must be a public JWK (it contains private key material)")
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise SignatureError(
            f"signing key must be an Ed25519 OKP JWK, got kty={jwk.get('kty')!r} "
            f"crv={jwk.get('crv')!r}"
        )
    x = jwk.get("x")
    if not isinstance(x, str):
        raise SignatureError("signing key JWK has no x member")
    try:
        raw = jose.b64url_decode(x)
    except errors.OAuthError:
        raise SignatureError("signing key JWK x member is not base64url") from None
    if len(raw) != 32:
        raise SignatureError("signing key JWK x member is not a 32-byte Ed25519 key")
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


@functools.lru_cache(maxsize=1024)
def _ed25519_from_x(x: str) -> tuple[ed25519.Ed25519PublicKey, str]:
    # A pure function of ``x`` (errors are raised, never cached): the key object and its
    # RFC 7638 thumbprint are computed once per agent key rather than once per request.
    key = ed25519_public_key({"kty": "OKP", "crv": "Ed25519", "x": x})
    # RFC 7638 canonical JSON of the required members; x just decoded as strict base64url,
    # so it needs no JSON escaping and this is byte-for-byte what jose.jwk_thumbprint hashes.
    canonical = f'{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}'
    return key, jose.b64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())


def _public_key_and_thumbprint(jwk: Mapping[str, Any]) -> tuple[ed25519.Ed25519PublicKey, str]:
    """:func:`ed25519_public_key` (same checks, same errors) plus the key's thumbprint."""
    x = jwk.get("x")
    if (
        "d" in jwk
        or jwk.get("kty") != "OKP"
        or jwk.get("crv") != "Ed25519"
        or not isinstance(x, str)
    ):
        ed25519_public_key(jwk)  # raises the precise SignatureError
        raise SignatureError("signing key must be an Ed25519 OKP JWK")  # pragma: no cover
    return _ed25519_from_x(x)


# --------------------------------------------------------------------------- Signature-Key


def signature_key_jwt(token: str, *, label: str = SIGNATURE_LABEL) -> str:
    """``Signature-Key`` value presenting a bound agent token (AAuth ``sig=jwt``)."""
    params: dict[str, http_sf.types.BareItemType] = {"jwt": token}
    return http_sf.ser({label: (http_sf.Token("jwt"), params)})


def signature_key_hwk(
    key: ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey, *, label: str = SIGNATURE_LABEL
) -> str:
    """``Signature-Key`` value carrying a bare Ed25519 public key (``sig=hwk``)."""
    jwk = public_jwk(key)
    params: dict[str, http_sf.types.BareItemType] = {
        "kty": jwk["kty"],
        "crv": jwk["crv"],
        "x": jwk["x"],
    }
    return http_sf.ser({label: (http_sf.Token("hwk"), params)})


@dataclass(frozen=True, slots=True)
class _SignatureKey:
    scheme: SignatureKeyScheme
    params: dict[str, Any]


# Fast paths for the two forms agentauth emits; anything else goes through the full
# Structured Fields parser.  Both patterns only match valid sf-dictionary syntax, and the
# value is covered by the signature verbatim, so they cannot change what is trusted.
_JWT_MEMBER = re.compile(r'([a-z*][a-z0-9_.*-]*)=jwt;jwt="([A-Za-z0-9_.~+/=-]+)"')
_HWK_MEMBER = re.compile(
    r'([a-z*][a-z0-9_.*-]*)=hwk;kty="([A-Za-z]+)";crv="([A-Za-z0-9-]+)";x="([A-Za-z0-9_-]+)"'
)


def _parse_signature_key(value: str, *, label: str) -> _SignatureKey:
    fast = _JWT_MEMBER.fullmatch(value)
    if fast is not None and fast.group(1) == label:
        return _SignatureKey("jwt", {"jwt": fast.group(2)})
    fast = _HWK_MEMBER.fullmatch(value)
    if fast is not None and fast.group(1) == label:
        return _SignatureKey(
            "hwk", {"kty": fast.group(2), "crv": fast.group(3), "x": fast.group(4)}
        )
    return _parse_signature_key_fully(value, label=label)


def _parse_signature_key_fully(value: str, *, label: str) -> _SignatureKey:
    def reject_duplicate(key: str, context: str) -> None:
        raise SignatureError(f"Signature-Key has duplicate {context} key {key!r}")

    try:
        parsed = http_sf.parse(
            value.encode("ascii"), tltype="dictionary", on_duplicate_key=reject_duplicate
        )
    except (http_sf.StructuredFieldError, UnicodeEncodeError, ValueError):
        raise SignatureError("Signature-Key is not a valid structured field dictionary") from None
    if not isinstance(parsed, dict) or list(parsed) != [label]:
        raise SignatureError(f"Signature-Key must have exactly one member labelled {label!r}")
    member = parsed[label]
    if not isinstance(member, tuple) or not isinstance(member[0], http_sf.Token):
        raise SignatureError("Signature-Key member must be a token such as jwt or hwk")
    scheme, params = str(member[0]), member[1]
    if scheme == "jwt":
        return _SignatureKey("jwt", dict(params))
    if scheme == "hwk":
        return _SignatureKey("hwk", dict(params))
    raise SignatureError(f"Signature-Key scheme {scheme!r} is not supported (use jwt or hwk)")


def _key_from_jwt(
    token: str, verifier: Callable[[str], Mapping[str, Any]] | None
) -> tuple[dict[str, str], Mapping[str, Any] | None, object]:
    """The token's ``cnf.jwk`` (its key members and ``kid``), its vouched claims, and
    ``cnf.jkt`` as the token states it (the caller checks it against the key's thumbprint)."""
    if verifier is not None:
        claims: Mapping[str, Any] = verifier(token)
        vouched: Mapping[str, Any] | None = claims
    else:
        try:
            claims = jose.parse(token).payload
        except errors.OAuthError:
            raise SignatureError("Signature-Key jwt is not a compact JWS") from None
        vouched = None
    cnf = claims.get("cnf")
    if not isinstance(cnf, Mapping) or not isinstance(jwk := cnf.get("jwk"), Mapping):
        raise SignatureError("token is not bound to a key (no cnf.jwk)")
    _check_key_algorithm(jwk.get("alg"), what="cnf.jwk")
    jwk_dict = {str(k): str(v) for k, v in jwk.items() if k in ("kty", "crv", "x", "d", "kid")}
    return jwk_dict, vouched, cnf.get("jkt")


def _names_key(keyid: str, *, thumbprint: str, kid: str | None) -> bool:
    """Whether a signed ``keyid`` names the signing key: its RFC 7638 thumbprint, or the
    ``kid`` member its JWK carries (in ``cnf.jwk`` or the ``hwk`` parameters)."""
    names = keyid.encode()
    return hmac.compare_digest(names, thumbprint.encode()) or (
        kid is not None and hmac.compare_digest(names, kid.encode())
    )


def _check_key_algorithm(alg: object, *, what: str) -> None:
    """A key's optional ``alg`` must name Ed25519: ``EdDSA`` or ``Ed25519`` (RFC 9864)."""
    if alg is not None and alg not in jose.ED25519_ALGORITHMS:
        raise SignatureError(f"{what} alg must be EdDSA or Ed25519, not {str(alg)[:32]!r}")


# --------------------------------------------------------------------------- message adapter


class _FieldLines:
    """Header field lines in wire order, with the mapping interface the library expects."""

    def __init__(self, lines: list[tuple[str, str]]) -> None:
        self._lines = lines

    def items(self) -> Iterable[tuple[str, str]]:
        return list(self._lines)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for name, _ in self._lines))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(n.lower() == name.lower() for n, _ in self._lines)

    def __setitem__(self, name: str, value: str) -> None:
        self.__delitem__(name)
        self._lines.append((name, value))

    def __delitem__(self, name: str) -> None:
        self._lines = [(n, v) for n, v in self._lines if n.lower() != name.lower()]

    def get(self, name: str) -> str | None:
        values = [v for n, v in self._lines if n.lower() == name.lower()]
        return ", ".join(values) if values else None


@dataclass
class _Request:
    method: str
    url: str
    headers: _FieldLines


HeaderInput = Mapping[str, str] | Iterable[tuple[str, str]] | Iterable[tuple[bytes, bytes]]
"""Header field lines: a mapping, or (name, value) pairs as str or as raw latin-1 bytes."""


def _field_lines(headers: HeaderInput) -> list[tuple[str, str]]:
    items: Iterable[Any] = headers.items() if isinstance(headers, Mapping) else headers
    lines: list[tuple[str, str]] = []
    for name, value in items:
        lines.append(
            (
                name.decode("latin-1") if isinstance(name, bytes) else str(name),
                value.decode("latin-1") if isinstance(value, bytes) else str(value),
            )
        )
    return lines


# --------------------------------------------------------------------------- signing


def content_digest(body: bytes) -> str:
    """RFC 9530 ``Content-Digest`` value (``sha-256``) for ``body``."""
    return hms.ContentDigest.create(body)


def sign_request(
    *,
    method: str,
    url: str,
    headers: HeaderInput,
    body: bytes | None,
    private_key: ed25519.Ed25519PrivateKey,
    key_id: str | None = None,
    signature_key_header: str | None,
    created: int | None = None,
    components: Sequence[str] | None = None,
    label: str = SIGNATURE_LABEL,
    include_alg: bool = True,
    nonce: str | None = None,
    include_nonce: bool = True,
) -> dict[str, str]:
    """Sign a request; return the headers to add (``Signature-Input``, ``Signature``, and
    ``Signature-Key``/``Content-Digest`` when they apply).

    ``url`` is the absolute, encoded request URL.  ``signature_key_header`` is a value from
    :func:`signature_key_jwt` or :func:`signature_key_hwk` (``None`` signs without one, for
    plain RFC 9421 use).  Coverage defaults to :data:`BASE_COMPONENTS` (minus
    ``signature-key`` when there is none) plus ``content-digest`` for a non-empty body.
    ``key_id`` defaults to the key's RFC 7638 thumbprint; ``created`` to the current time.
    A random ``nonce`` is signed too (unless ``include_nonce=False``): Ed25519 is
    deterministic, so two identical requests in the same second would otherwise carry the
    same signature and the second would be refused as a replay.
    """
    lines = [
        (n, v)
        for n, v in _field_lines(headers)
        if n.lower() not in ("signature", "signature-input", "signature-key")
    ]
    added: dict[str, str] = {}
    if signature_key_header is not None:
        lines.append(("Signature-Key", signature_key_header))
        added["Signature-Key"] = signature_key_header
    if components is None:
        components = BASE_COMPONENTS if signature_key_header is not None else BASE_COMPONENTS[:3]
    message = _Request(method=method.upper(), url=url, headers=_FieldLines(lines))
    had_digest = "content-digest" in message.headers
    signer = hms.HTTPMessageSigner(signature_algorithm=hms.algorithms.ED25519)
    try:
        # The library builds the signature base (prepare); we sign it and serialize the two
        # headers.  Its apply() would rebuild the whole base only to check that a message we
        # own has not changed in between, doubling the per-request cost.
        prepared = signer.prepare(
            message,
            key_id=key_id if key_id is not None else jwk_thumbprint(public_jwk(private_key)),
            created=datetime.datetime.fromtimestamp(created, tz=datetime.UTC)
            if created is not None
            else None,
            label=label,
            include_alg=include_alg,
            nonce=(nonce or secrets.token_urlsafe(12)) if include_nonce else None,
            covered_component_ids=tuple(components),
            body=body if body else None,
            use_existing_digest=had_digest,
        )
    except hms.HTTPMessageSignaturesException as exc:
        raise SignatureError(f"cannot sign request: {exc}") from exc
    signature = private_key.sign(prepared.signature_base)
    if not had_digest:
        digest = message.headers.get("Content-Digest")
        if digest is not None:
            added["Content-Digest"] = digest
    added["Signature-Input"] = f"{prepared.label}={prepared.signature_params}"
    added["Signature"] = http_sf.ser({prepared.label: (signature, {})})
    return added


# --------------------------------------------------------------------------- verification

# The library's handler; only its signature-base builder is used (it is stateless).
_BASE_BUILDER = hms.HTTPMessageVerifier(
    signature_algorithm=hms.algorithms.ED25519, key_resolver=None
)
_ALGORITHM_ID = hms.algorithms.ED25519.algorithm_id

# Fast paths for the single-signature form every RFC 9421 signer emits for one label:
# ``sig=("@method" ...);created=1;keyid="..."`` and ``sig=:<base64>:``.  A match yields
# exactly the values the Structured Fields parser returns for the same text (plain strings
# without escapes, integers, no bare-boolean parameters; duplicates are detected below), so
# the outcome cannot differ; anything else -- several members, inner-list parameters on
# components, escapes -- goes through the library's parser.
_SF_KEY = r"[a-z*][a-z0-9_.*-]*"
_SF_COMPONENT = r'"[a-z0-9@_.-]+"'
# Integers are matched in their canonical serialisation only (no leading zeros, no "-0"), so
# that the text after ``label=`` is exactly what the library serialises as ``@signature-params``.
_SIGNATURE_INPUT_MEMBER = re.compile(
    rf"({_SF_KEY})=(\(((?:{_SF_COMPONENT}(?: {_SF_COMPONENT})*)?)\)"
    rf'((?:;{_SF_KEY}=(?:0|-?[1-9][0-9]{{0,14}}|"[ !#-\[\]-~]*"))*))'
)
_SIGNATURE_PARAM = re.compile(rf'({_SF_KEY})=(?:(-?[0-9]+)|"([^"]*)")')
_SIGNATURE_MEMBER = re.compile(rf"({_SF_KEY})=:([A-Za-z0-9+/]+={{0,2}}):")


class _Component(Item):
    """A covered component identifier without parameters, as the library's parser yields it,
    whose serialisation (by http_sf, once) is kept: the library serialises every component
    identifier for its line of the signature base, and the same few identifiers recur in
    every request.  Instances are shared between requests and never mutated."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._serialized = super().__str__()

    def __str__(self) -> str:
        return self._serialized


@functools.lru_cache(maxsize=128)
def _components(inner: str) -> tuple[tuple[_Component, ...], tuple[str, ...]]:
    # ``inner`` matched _SF_COMPONENT items separated by single spaces: the identifiers and
    # their names.
    names = tuple(name[1:-1] for name in inner.split(" ") if name)
    return tuple(_Component(name) for name in names), names


class _SignatureInput:
    """The one signature of a request: its label, covered component identifiers (Items as
    the library expects them), signature parameters and raw signature bytes.

    ``names`` and ``params_text`` are set only when ``Signature-Input`` was read by the fast
    path: the plain component names and the member's text after ``label=``, which is then
    the canonical ``@signature-params`` serialisation (see :mod:`signaturebase`)."""

    __slots__ = ("components", "label", "names", "params", "params_text", "signature")

    def __init__(
        self,
        *,
        label: str,
        components: Sequence[Item],
        params: dict[str, Any],
        signature: bytes,
        names: tuple[str, ...] | None = None,
        params_text: str | None = None,
    ) -> None:
        self.label = label
        self.components = components
        self.params = params
        self.signature = signature
        self.names = names
        self.params_text = params_text


def _fast_signature_input(signature_input: str, signature: str) -> _SignatureInput | None:
    members = _SIGNATURE_INPUT_MEMBER.fullmatch(signature_input)
    sig = _SIGNATURE_MEMBER.fullmatch(signature)
    if members is None or sig is None or sig.group(1) != members.group(1):
        return None
    try:
        raw_signature = base64.b64decode(sig.group(2), validate=True)
    except (binascii.Error, ValueError):
        return None
    found = _SIGNATURE_PARAM.findall(members.group(4))
    params: dict[str, Any] = {
        name: int(integer) if integer else string for name, integer, string in found
    }
    if len(params) != len(found):
        return None  # duplicate parameter: let the full parser decide
    components, names = _components(members.group(3))
    return _SignatureInput(
        label=members.group(1),
        components=components,
        params=params,
        signature=raw_signature,
        names=names,
        params_text=members.group(2),
    )


def _parse_signature_input(signature_input: str, signature: str, *, label: str) -> _SignatureInput:
    """The one signature of a request, from ``Signature-Input`` and ``Signature``."""
    fast = _fast_signature_input(signature_input, signature)
    if fast is not None:
        parsed = fast
    else:
        try:
            inputs = _BASE_BUILDER._parse_signature_dictionary(signature_input)
        except Exception:
            raise SignatureError('Malformed structured header field "Signature-Input"') from None
        try:
            values = _BASE_BUILDER._parse_signature_dictionary(signature)
        except Exception:
            raise SignatureError('Malformed structured header field "Signature"') from None
        if len(inputs) == 0 or len(values) == 0:
            raise SignatureError("No signatures found in the message")
        if len(inputs) > 1 or len(values) > 1:
            raise SignatureError("request must carry exactly one signature")
        if inputs.keys() != values.keys():
            raise SignatureError("Signature-Input and Signature headers have different labels")
        found_label = next(iter(inputs))
        components, value = inputs[found_label], values[found_label]
        if not isinstance(components, InnerList):
            raise SignatureError(f'Signature-Input member "{found_label}" must be an Inner List')
        if not isinstance(value, Item) or not isinstance(value.value, bytes):
            raise SignatureError(f'Signature member "{found_label}" must be a Byte Sequence')
        parsed = _SignatureInput(
            label=found_label,
            components=list(components),
            params=dict(components.params),
            signature=value.value,
        )
    if parsed.label != label:
        raise SignatureError(f"request must carry exactly one signature labelled {label!r}")
    return parsed


def _check_signature_parameters(params: Mapping[str, Any], *, now: float, max_age: int) -> int:
    """RFC 9421 section 3.2 policy checks on the signed metadata; returns ``created``."""
    created = params.get("created")
    if created is None:
        raise SignatureError('signature is missing the "created" parameter')
    if type(created) is not int:
        raise SignatureError('signature "created" parameter must be an integer')
    if created > now + MAX_CLOCK_SKEW:
        raise SignatureError('signature "created" is in the future')
    if created < now - max_age:
        raise SignatureError(f"signature expired: created more than {max_age}s ago")
    expires = params.get("expires")
    if expires is not None and (type(expires) is not int or expires < now):
        raise SignatureError('signature "expires" has passed')
    if "alg" in params and params["alg"] != _ALGORITHM_ID:
        raise SignatureError("Unexpected algorithm specified in the signature")
    keyid = params.get("keyid")
    if keyid is not None and not isinstance(keyid, str):
        raise SignatureError('signature "keyid" parameter must be a string')
    for name in params:
        if name not in _BASE_BUILDER.signature_metadata_parameters:
            raise SignatureError(f'Unexpected signature metadata parameter "{name}"')
    return created


def verify_request(
    *,
    method: str,
    url: str,
    headers: HeaderInput,
    body: bytes | None,
    now: float,
    max_age: int = MAX_AGE_SECONDS,
    required_components: Sequence[str] = BASE_COMPONENTS,
    token_verifier: Callable[[str], Mapping[str, Any]] | None = None,
    label: str = SIGNATURE_LABEL,
) -> VerifiedRequest:
    """Verify an AAuth-signed request; raise :class:`SignatureError` if it does not verify.

    ``url`` is the absolute URL the request was addressed to (scheme and authority as the
    client used them).  ``headers`` are the field lines as received (a mapping, or pairs of
    str/bytes to keep repeated lines).  ``now`` is the verifier's clock in epoch seconds.
    ``token_verifier`` verifies the ``sig=jwt`` token and returns its claims; exceptions it
    raises propagate unchanged (so an ``OAuthError`` from token checks stays an OAuthError).

    The three signature fields are read once; the library builds the signature base once
    (``_build_signature_base``, the routine its own ``verify()`` uses), and the Ed25519 check
    runs on the key object taken from ``Signature-Key``.
    """
    lines = _field_lines(headers)
    fields = _signature_fields(lines)
    signature_key_value = fields.get("signature-key")
    if signature_key_value is None:
        raise SignatureError("request has no Signature-Key header")
    signature_input_value = fields.get("signature-input")
    signature_value = fields.get("signature")
    if signature_input_value is None or signature_value is None:
        raise SignatureError("request is not signed (no Signature-Input/Signature headers)")
    signature_key = _parse_signature_key(signature_key_value, label=label)

    token: str | None = None
    claims: Mapping[str, Any] | None = None
    if signature_key.scheme == "jwt":
        raw_token = signature_key.params.get("jwt")
        if not isinstance(raw_token, str) or not raw_token:
            raise SignatureError('Signature-Key sig=jwt has no "jwt" parameter')
        token = raw_token
        jwk, claims, stated_jkt = _key_from_jwt(token, token_verifier)
    else:
        stated_jkt = None
        _check_key_algorithm(signature_key.params.get("alg"), what="Signature-Key hwk")
        jwk = {
            k: str(v)
            for k, v in signature_key.params.items()
            if k in ("kty", "crv", "x", "d", "kid")
        }
    public_key, thumbprint = _public_key_and_thumbprint(jwk)  # validates the key type first
    if stated_jkt is not None and (
        not isinstance(stated_jkt, str) or not hmac.compare_digest(stated_jkt, thumbprint)
    ):
        raise SignatureError("token cnf.jkt does not match cnf.jwk")
    named_kid = jwk.get("kid")
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": jwk["x"]}

    signed = _parse_signature_input(signature_input_value, signature_value, label=label)
    params = signed.params
    created = _check_signature_parameters(params, now=now, max_age=max_age)
    signature_base, covered_values = _signature_base(
        method=method.upper(), url=url, lines=lines, signed=signed
    )
    try:
        public_key.verify(signed.signature, signature_base)
    except InvalidSignature:
        raise SignatureError("signature does not verify with the presented key") from None
    keyid = params.get("keyid")
    if keyid is not None and not _names_key(keyid, thumbprint=thumbprint, kid=named_kid):
        # RFC 9421 makes keyid optional; the key comes from Signature-Key, and a keyid that
        # names another key is a signer's mistake or a confusion attempt.
        raise SignatureError(
            'signature "keyid" does not name the signing key (use its RFC 7638 thumbprint or '
            "the kid of its JWK, or leave keyid out)"
        )
    try:
        _check_body(covered_values, body or b"")
    except hms.HTTPMessageSignaturesException as exc:
        raise SignatureError(_reason(exc)) from None
    # A bare identifier counts as its name; one with parameters (``"content-digest";sf``)
    # only in its serialised form, so it never stands in for the bare component.
    covered = (
        signed.names
        if signed.names is not None
        else tuple(str(c.value) if not c.params else str(c) for c in signed.components)
    )
    for component in required_components:
        if component not in covered:
            raise SignatureError(f"signature does not cover required component {component!r}")
    if body and "content-digest" not in covered:
        raise SignatureError("signature does not cover content-digest for a request with a body")
    return VerifiedRequest(
        scheme=signature_key.scheme,
        public_jwk=jwk,
        jkt=thumbprint,
        token=token,
        token_claims=claims,
        label=signed.label,
        keyid=keyid,
        created=created,
        covered_components=covered,
        # Replay identity: a digest of the signed base (covered values plus the signed
        # parameters, including created and nonce).  Re-encoding the Signature header cannot
        # change it.
        replay_id=hashlib.sha256(signature_base).digest(),
    )


def _signature_base(
    *, method: str, url: str, lines: Sequence[tuple[str, str]], signed: _SignatureInput
) -> tuple[bytes, Mapping[str, str]]:
    """The signature base and the covered values: joined directly for the plain shapes
    (:mod:`signaturebase`), by the library for everything else."""
    if signed.names is not None and signed.params_text is not None:
        fast = signaturebase.build(
            method=method,
            url=url,
            lines=lines,
            components=signed.names,
            signature_params=signed.params_text,
        )
        if fast is not None:
            return fast
    if any(str(c.value) == "@signature-params" for c in signed.components):
        raise SignatureError('"@signature-params" cannot be a covered component')
    # Only the covered fields reach the library's component resolver (it indexes every
    # line it is given); the values it sees for them are unchanged.
    covered_fields = {str(c.value).lower() for c in signed.components}
    message = _Request(
        method=method,
        url=url,
        headers=_FieldLines([(n, v) for n, v in lines if n.lower() in covered_fields]),
    )
    try:
        base, _, covered_values = _BASE_BUILDER._build_signature_base(
            message, covered_component_ids=list(signed.components), signature_params=signed.params
        )
        return base.encode("ascii"), covered_values
    except (hms.HTTPMessageSignaturesException, ValueError, TypeError) as exc:
        raise SignatureError(_reason(exc)) from None


_SIGNATURE_FIELDS = frozenset({"signature-key", "signature-input", "signature"})


def _signature_fields(lines: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The three signature fields, each line normalised and the lines of one field joined
    as RFC 9110 section 5.3 combines them (what the library does for any field)."""
    found: dict[str, str] = {}
    for name, value in lines:
        lowered = name.lower()
        if lowered in _SIGNATURE_FIELDS:
            # normalize_header_value is a strip unless there is obsolete line folding.
            value = normalize_header_value(value) if "\r\n" in value else value.strip(" \t")
            seen = found.get(lowered)
            found[lowered] = value if seen is None else f"{seen}, {value}"
    return found


_SHA256_DIGEST = re.compile(r"sha-256=:([A-Za-z0-9+/]{43}=):")


def _check_body(covered: Mapping[str, str], body: bytes) -> None:
    """RFC 9530: a non-empty body needs a covered ``Content-Digest`` that matches it.

    The common ``"content-digest"`` component is checked directly with the library's
    ``ContentDigest.verify``; parameterised forms go through its ``verify_components``.
    """
    value = covered.get('"content-digest"')
    if value is not None:
        # The form every signer emits, one sha-256 member, is compared here; any other
        # shape (several members, sha-512, bad syntax) goes to the library.
        fast = _SHA256_DIGEST.fullmatch(value)
        if fast is not None:
            expected = base64.b64decode(fast.group(1))
            if len(expected) == hashlib.sha256().digest_size:
                if not hmac.compare_digest(expected, hashlib.sha256(body).digest()):
                    raise hms.InvalidSignature("Content-Digest does not match the message body")
                return
        hms.ContentDigest.verify(value, body)
        return
    parameterised = any(name.startswith('"content-digest"') for name in covered)
    if parameterised and hms.ContentDigest.verify_components(covered, body):
        return
    if body:
        raise hms.InvalidSignature("The message body requires a signed Content-Digest")


def _reason(exc: Exception) -> str:
    # The library wraps cryptography's InvalidSignature (empty message) in its own.
    text = str(exc).strip()
    cause = exc.__cause__ or exc.__context__
    if (
        not text
        or text == "Signature verification failed"
        or (cause is not None and type(cause).__name__ == "InvalidSignature" and not str(cause))
    ):
        return "signature does not verify with the presented key"
    if "Multiple signatures found" in text:
        return "request must carry exactly one signature"
    return text
