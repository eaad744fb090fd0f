"""The directly joined RFC 9421 signature base against http-message-signatures, the oracle.

Differential tests over generated requests: every derived component agentauth builds itself,
HTTP fields (repeated lines, obsolete folding, empty values, tabs, control characters,
non-ASCII text), parameters, query strings and percent-encoded or raw non-ASCII paths.
Whenever :func:`signaturebase.build` answers, its base must be byte for byte the library's and
the library must accept the same input; everything else must fall back (``None``).  Then
end-to-end: requests signed by the library verify through ``signatures.verify_request``, on the
fast path where it applies and through the library where it does not.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import http_message_signatures as hms
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from http_sf.compat import InnerList, Item
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agentauth.domain import signaturebase, signatures

_LIBRARY = hms.HTTPMessageVerifier(signature_algorithm=hms.algorithms.ED25519, key_resolver=None)
_SETTINGS = settings(
    max_examples=800,
    deadline=None,
    derandomize=True,  # the same examples on every run, in CI too
    suppress_health_check=[HealthCheck.too_slow],
)

DERIVED = sorted(signaturebase.DERIVED_COMPONENTS)

OUTSIDE = ["@query-param", "@status", "set-cookie", "x-missing", "@unknown"]

# Each axis has a clean part (what the fast path must handle) and a dirty part (what it must
# leave to the library); a request is drawn clean on every axis two times in three.
CLEAN_METHODS = ["GET", "POST", "PUT", "DELETE", "OPTIONS", "CONNECT", "M-SEARCH"]
CLEAN_HOSTS = ["example.com", "Example.COM", "api.example.test", "127.0.0.1", "exa%41mple.com"]
DIRTY_HOSTS = ["[::1]", "[v1.x]", "bad host", "bücher.example", ""]
CLEAN_PORTS = ["443", "80", "0443", "00080", "8443", ""]
_CLEAN_PATH = ["a", "Z", "0", "-", ".", "_", "~", "!", "$", "&", "'", "(", ")", "*", "+", ",", ";"]
_CLEAN_PATH += ["=", ":", "@", "/", "%20", "%C3%A9", "%2F", "%7e"]
_DIRTY_PATH = ["%zz", "é", " ", "?", "#", "\t", "%"]
_CLEAN_QUERY = ["a=1", "b=", "&", "=", "?", "/", "%2B", "+", "c", "%C3%A9"]
_DIRTY_QUERY = ["é", "x y", "#", "%g0"]
_CLEAN_VALUE = ["text/plain", " ", "\t", ",", '"', "a=b", "sha-256=:x:", ";q=1", "", "  ", "~"]
_DIRTY_VALUE = ["\r\n ", "\r\n\t", "\n", "\r", "é", "\x00", "\x7f", "\x85"]
LINE_NAMES = ["Content-Type", "content-type", "CONTENT-DIGEST", "Signature-Key", "Authorization"]
LINE_NAMES += ["X-Empty", "x-multi", "X-Multi", "Date"]


def _pieces(clean: list[str], dirty: list[str], *, dirty_ok: bool, size: int) -> st.SearchStrategy:
    return st.lists(st.sampled_from(clean + dirty if dirty_ok else clean), max_size=size).map(
        "".join
    )


@st.composite
def requests(draw: st.DrawFn) -> dict[str, object]:
    dirty = draw(st.integers(0, 2)) == 0
    method = draw(st.sampled_from(CLEAN_METHODS + (["get", "Post"] if dirty else [])))
    scheme = draw(st.sampled_from(["https", "http", "HTTPS", "Http", "wss"]))
    host = draw(st.sampled_from(CLEAN_HOSTS + (DIRTY_HOSTS if dirty else [])))
    port = draw(st.one_of(st.none(), st.sampled_from(CLEAN_PORTS + (["x"] if dirty else []))))
    path = draw(
        st.one_of(
            st.just(""),
            _pieces(_CLEAN_PATH, _DIRTY_PATH, dirty_ok=dirty, size=8).map(lambda p: "/" + p),
        )
    )
    query = draw(st.one_of(st.none(), _pieces(_CLEAN_QUERY, _DIRTY_QUERY, dirty_ok=dirty, size=5)))
    names = LINE_NAMES + (["Set-Cookie", "set-cookie"] if dirty else [])
    lines = draw(
        st.lists(
            st.tuples(
                st.sampled_from(names),
                _pieces(_CLEAN_VALUE, _DIRTY_VALUE, dirty_ok=dirty, size=6),
            ),
            max_size=8,
        )
    )
    present = sorted({name.lower() for name, _ in lines})
    pool = DERIVED + present + (OUTSIDE if dirty else [])
    covered = draw(st.lists(st.sampled_from(pool), max_size=7, unique=not dirty))
    params = draw(parameters)
    return {
        "method": method,
        "url": _url(scheme, host, port, path, query),
        "lines": lines,
        "names": covered,
        "params": params,
    }


methods = st.sampled_from([*CLEAN_METHODS, "get"])
ports = st.one_of(st.none(), st.sampled_from(CLEAN_PORTS))
paths = st.one_of(
    st.just(""), _pieces(_CLEAN_PATH, [], dirty_ok=False, size=8).map(lambda p: "/" + p)
)
queries = st.one_of(st.none(), _pieces(_CLEAN_QUERY, [], dirty_ok=False, size=5))
parameters = st.fixed_dictionaries(
    {},
    optional={
        "created": st.integers(min_value=-5, max_value=2**40),
        "expires": st.integers(min_value=0, max_value=2**40),
        "keyid": st.text(alphabet="abcXYZ019-_ =", max_size=12),
        "alg": st.sampled_from(["ed25519", "rsa-pss-sha512"]),
        "nonce": st.text(alphabet="abcdef0123", max_size=10),
        "tag": st.sampled_from(["aauth", "x"]),
    },
)


def _url(scheme: str, host: str, port: str | None, path: str, query: str | None) -> str:
    return (
        f"{scheme}://{host}"
        + ("" if port is None else f":{port}")
        + path
        + ("" if query is None else f"?{query}")
    )


def _params_text(names: list[str], params: dict[str, object]) -> str:
    node = InnerList([Item(name) for name in names])
    node.params.update(params)
    return str(node)


def _library_base(
    *, method: str, url: str, lines: list[tuple[str, str]], names: list[str], params: dict
) -> tuple[bytes, dict[str, str]] | Exception:
    message = signatures._Request(method=method, url=url, headers=signatures._FieldLines(lines))
    try:
        base, _, covered = _LIBRARY._build_signature_base(
            message, covered_component_ids=[Item(n) for n in names], signature_params=params
        )
    except Exception as exc:  # the oracle's refusal, whatever its type
        return exc
    return base.encode("ascii"), dict(covered)


@_SETTINGS
@given(request=requests())
def test_a_direct_base_is_byte_for_byte_the_library_base(request: dict[str, Any]) -> None:
    method, url, lines = request["method"], request["url"], request["lines"]
    names, params = request["names"], request["params"]
    direct = signaturebase.build(
        method=method,
        url=url,
        lines=lines,
        components=names,
        signature_params=_params_text(names, params),
    )
    event("fast path" if direct is not None else "library")
    if direct is None:
        return  # outside the fast path: verify_request hands the message to the library
    oracle = _library_base(method=method, url=url, lines=lines, names=names, params=params)
    assert not isinstance(oracle, Exception), f"the library refuses what was joined: {oracle!r}"
    assert direct[0] == oracle[0]
    assert direct[1] == oracle[1]


# Shapes that must be on the fast path (so the differential test above is not vacuous), each
# checked against the oracle too.
FAST_CASES = [
    ("POST", "https://docs.example/v1/documents/42?view=full", list(signatures.BASE_COMPONENTS)),
    ("GET", "https://Docs.Example:443/", ["@method", "@authority", "@path", "@query"]),
    ("GET", "http://docs.example:8080", ["@target-uri", "@request-target", "@scheme"]),
    ("OPTIONS", "https://docs.example", ["@target-uri", "@path"]),
    ("CONNECT", "https://docs.example:8443/x", ["@request-target", "@authority"]),
    ("GET", "https://docs.example/caf%C3%A9/%20?q=%C3%A9&x=", ["@path", "@query", "@target-uri"]),
    ("PUT", "https://u:p@docs.example/a#frag", ["@target-uri", "@authority"]),
]
FAST_LINES = [
    ("Content-Type", " application/json\t"),
    ("X-Multi", "one"),
    ("x-multi", ""),
    ("X-MULTI", "three,  four "),
    ("X-Empty", ""),
    ("Signature-Key", 'sig=hwk;kty="OKP";crv="Ed25519";x="abc"'),
    ("Content-Digest", "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"),
]


@pytest.mark.parametrize(("method", "url", "names"), FAST_CASES)
@pytest.mark.parametrize("fields", [[], ["content-type", "x-multi", "x-empty", "content-digest"]])
def test_common_shapes_take_the_fast_path_and_match(
    method: str, url: str, names: list[str], fields: list[str]
) -> None:
    covered = [*names, *fields]
    params = {"created": 1_790_000_000, "keyid": "k", "alg": "ed25519", "nonce": "n"}
    direct = signaturebase.build(
        method=method,
        url=url,
        lines=FAST_LINES,
        components=covered,
        signature_params=_params_text(covered, params),
    )
    assert direct is not None
    oracle = _library_base(method=method, url=url, lines=FAST_LINES, names=covered, params=params)
    assert not isinstance(oracle, Exception)
    assert direct == oracle


@pytest.mark.parametrize(
    ("method", "url", "lines", "names"),
    [
        ("get", "https://docs.example/", [], ["@method"]),
        ("GET", "https://docs.example/é", [], ["@path"]),
        ("GET", "https://[::1]/", [], ["@authority"]),
        ("GET", "https://docs.example/", [], ["@query-param"]),
        ("GET", "https://docs.example/", [], ["@path", "@path"]),
        ("GET", "https://docs.example/", [], ["x-missing"]),
        ("GET", "https://docs.example/", [("X-A", "a\r\n b")], ["x-a"]),
        ("GET", "https://docs.example/", [("X-A", "caf\xe9")], ["x-a"]),
        ("GET", "https://docs.example/", [("X-A", "a\x01")], ["x-a"]),
        ("GET", "https://docs.example/", [("Set-Cookie", "a=1")], ["set-cookie"]),
    ],
)
def test_everything_else_falls_back_to_the_library(
    method: str, url: str, lines: list[tuple[str, str]], names: list[str]
) -> None:
    assert (
        signaturebase.build(
            method=method,
            url=url,
            lines=lines,
            components=names,
            signature_params=_params_text(names, {"created": 1}),
        )
        is None
    )


# --------------------------------------------------------------------------- end to end

_KEY = ed25519.Ed25519PrivateKey.generate()
_SIGNATURE_KEY = signatures.signature_key_hwk(_KEY)
NOW = 1_790_000_000


def _verifies_both_ways(
    *, method: str, url: str, lines: list[tuple[str, str]], names: list[str], body: bytes
) -> signatures.VerifiedRequest:
    """Sign with the library (through sign_request), verify through verify_request, and check
    that the base verify_request used is the library's (its replay id is the base's digest)."""
    added = signatures.sign_request(
        method=method,
        url=url,
        headers=lines,
        body=body,
        private_key=_KEY,
        signature_key_header=_SIGNATURE_KEY,
        created=NOW,
        components=names,
    )
    received = [*lines, *added.items()]
    verified = signatures.verify_request(
        method=method,
        url=url,
        headers=received,
        body=body,
        now=NOW,
        required_components=(),
    )
    signed_input = signatures._parse_signature_input(
        added["Signature-Input"], added["Signature"], label=signatures.SIGNATURE_LABEL
    )
    oracle = _library_base(
        method=method,
        url=url,
        lines=received,
        names=[str(c.value) for c in signed_input.components],
        params=signed_input.params,
    )
    assert not isinstance(oracle, Exception)
    assert verified.replay_id == hashlib.sha256(oracle[0]).digest()
    return verified


@settings(_SETTINGS, max_examples=250)
@given(
    method=methods.filter(lambda m: m.isupper()),
    scheme=st.sampled_from(["https", "http"]),
    host=st.sampled_from(["example.com", "Api.Example.test"]),
    port=ports,
    path=paths,
    query=queries,
    lines=st.lists(
        st.tuples(
            st.sampled_from(["Content-Type", "X-Multi", "x-multi", "X-Empty"]),
            st.lists(
                st.sampled_from(["text/plain", " ", "\t", ",", '"', "a=b", ""]), max_size=4
            ).map("".join),
        ),
        max_size=5,
    ),
    derived=st.lists(st.sampled_from(DERIVED), unique=True, max_size=5),
    body=st.sampled_from([b"", b"{}", "é".encode()]),
)
def test_library_signed_requests_verify(
    method: str,
    scheme: str,
    host: str,
    port: str | None,
    path: str,
    query: str | None,
    lines: list[tuple[str, str]],
    derived: list[str],
    body: bytes,
) -> None:
    url = _url(scheme, host, port, path, query)
    present = sorted({name.lower() for name, _ in lines})
    names = [*derived, *present, "signature-key"]
    if body:
        names.append("content-digest")
    verified = _verifies_both_ways(method=method, url=url, lines=lines, names=names, body=body)
    assert verified.covered_components == tuple(names)


@pytest.mark.parametrize(
    "names",
    [
        ['"content-type";bs', "@method", "signature-key", "content-digest"],
        ['"@query-param";name="q"', "@method", "signature-key", "content-digest"],
        ['"content-digest";sf', "@method", "signature-key", "content-digest"],
    ],
)
def test_components_outside_the_fast_path_go_through_the_library(names: list[str]) -> None:
    # sign_request takes serialised identifiers for parameterised components.
    lines = [("Content-Type", "text/plain")]
    body = b"{}"
    verified = signatures.verify_request(
        method="POST",
        url="https://docs.example/search?q=1",
        headers=[
            *lines,
            ("Content-Digest", signatures.content_digest(body)),
            *signatures.sign_request(
                method="POST",
                url="https://docs.example/search?q=1",
                headers=[*lines, ("Content-Digest", signatures.content_digest(body))],
                body=body,
                private_key=_KEY,
                signature_key_header=_SIGNATURE_KEY,
                created=NOW,
                components=names,
            ).items(),
        ],
        body=body,
        now=NOW,
        required_components=("@method",),
    )
    assert verified.covered_components[1] == "@method"


def test_a_non_canonical_signature_input_is_read_by_the_library() -> None:
    # created=0001790000000 is the integer 1790000000 (RFC 9651), serialised "1790000000" in
    # the base: the fast reading must not copy the received text into @signature-params.
    url = "https://docs.example/a"
    added = signatures.sign_request(
        method="GET",
        url=url,
        headers=[],
        body=None,
        private_key=_KEY,
        signature_key_header=_SIGNATURE_KEY,
        created=NOW,
        include_alg=False,
        include_nonce=False,
    )
    padded = added["Signature-Input"].replace(f"created={NOW}", f"created=000{NOW}")
    assert padded != added["Signature-Input"]
    verified = signatures.verify_request(
        method="GET",
        url=url,
        headers=[(k, padded if k == "Signature-Input" else v) for k, v in added.items()],
        body=None,
        now=NOW,
    )
    assert verified.created == NOW


def test_signature_params_cannot_be_a_covered_component() -> None:
    signature = base64.b64encode(b"\0" * 64).decode()
    with pytest.raises(signatures.SignatureError) as caught:
        signatures.verify_request(
            method="GET",
            url="https://docs.example/",
            headers=[
                ("Signature-Key", _SIGNATURE_KEY),
                ("Signature-Input", f'sig=("@method" "@signature-params");created={NOW}'),
                ("Signature", f"sig=:{signature}:"),
            ],
            body=None,
            now=NOW,
            required_components=(),
        )
    assert caught.value.reason == '"@signature-params" cannot be a covered component'
