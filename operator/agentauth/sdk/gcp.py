"""GCP subject token (``agentauth-k8s[gcp]``): a Google-signed ID token from the metadata server.

On Compute Engine, GKE (workload identity), Cloud Run and Cloud Functions, the metadata server
mints an ID token for the workload's service account with the audience we ask for. We ask for
the token service's issuer bound to the key that signs the exchange request
(``<issuer>#jkt=<RFC 7638 thumbprint>``, ``domain.federation.gcp.bound_audience``), so the
token is useless at any other relying party and to anyone without that key, and for
``format=full`` so it carries ``email``, ``email_verified`` and, on Compute Engine,
``google.compute_engine.project_id``.

The metadata host follows google-auth: ``metadata_host`` argument, else ``GCE_METADATA_HOST``,
else ``GCE_METADATA_ROOT``, else ``metadata.google.internal``. The request always carries
``Metadata-Flavor: Google`` and the answer must carry it back (as google-auth checks), so a
non-metadata server answering on that address is not believed. ``requests`` is imported lazily
so ``agentauth`` works without the ``gcp`` extra.
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse

from agentauth.domain.federation import gcp as gcp_federation
from agentauth.sdk import client

SUBJECT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
DEFAULT_METADATA_HOST = "metadata.google.internal"
IDENTITY_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity"
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_TIMEOUT_SECONDS = 5.0


class MetadataServerError(RuntimeError):
    """The metadata server did not hand out an ID token."""


def resolve_metadata_host(explicit: str | None = None) -> str:
    """The metadata server host, resolved the way google-auth resolves it."""
    if explicit:
        return explicit
    return (
        os.environ.get("GCE_METADATA_HOST")
        or os.environ.get("GCE_METADATA_ROOT")
        or DEFAULT_METADATA_HOST
    )


def gcp_subject_token(*, issuer: str, key_thumbprint: str, metadata_host: str | None = None) -> str:
    """A Google-signed ID token for the ``id_token`` type, its audience ``issuer`` bound to the
    key with thumbprint ``key_thumbprint`` (the key that will sign the exchange request)."""
    import requests  # lazy: the optional "gcp" extra

    host = resolve_metadata_host(metadata_host)
    # The token service canonicalises its issuer without a trailing slash; match it exactly.
    audience = gcp_federation.bound_audience(issuer, key_thumbprint)
    query = urllib.parse.urlencode({"audience": audience, "format": "full"})
    url = f"http://{host}{IDENTITY_PATH}?{query}"
    try:
        response = requests.get(
            url,
            headers={"Metadata-Flavor": "Google"},
            timeout=_TIMEOUT_SECONDS,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        raise MetadataServerError(f"cannot reach the GCP metadata server at {host}: {exc}") from exc
    if response.status_code != 200:
        raise MetadataServerError(
            f"the GCP metadata server at {host} answered HTTP {response.status_code}: "
            f"{response.text[:200]}"
        )
    if response.headers.get("Metadata-Flavor") != "Google":
        raise MetadataServerError(
            f"the server at {host} is not a GCP metadata server (no Metadata-Flavor: Google)"
        )
    token = response.text.strip()
    if not _JWT.fullmatch(token):
        raise MetadataServerError(f"the GCP metadata server at {host} answered something not a JWT")
    return token


@dataclasses.dataclass(frozen=True)
class GcpSubjectTokenSource:
    """An ``AgentClient`` subject-token source (``client.SubjectTokenSource``): fetches a fresh ID
    token from the metadata server for every exchange.

    Use as ``AgentClient(..., subject_token_source=GcpSubjectTokenSource(issuer=ISSUER))``.
    """

    issuer: str
    metadata_host: str | None = None

    def __call__(self, key_thumbprint: str) -> client.SubjectToken:
        return client.SubjectToken(
            token=gcp_subject_token(
                issuer=self.issuer,
                key_thumbprint=key_thumbprint,
                metadata_host=self.metadata_host,
            ),
            token_type=SUBJECT_TOKEN_TYPE,
        )
