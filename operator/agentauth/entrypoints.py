"""Console-script entry points (``agentauth``, ``kubectl-agentauth``) that name the missing extra.

The ``agentauth-k8s`` distribution installs both scripts whatever extras were chosen, but the base
install is only the SDK an agent pod needs. Guarantee: when a script needs a package that an
extra brings and it is not installed, the script exits 1 with one line naming the ``pip install``
command that adds it, instead of a traceback; any other import failure propagates unchanged.
"""

from __future__ import annotations

import sys

DISTRIBUTION = "agentauth-k8s"

# Top-level module -> the extra that installs it.
_OPERATOR = dict.fromkeys(
    ("kopf", "kubernetes", "aiohttp", "jwt", "pydantic", "prometheus_client", "yaml"), "operator"
)
_DEV = {"helm_python": "dev", "celpy": "dev"}
_KUBECTL = dict.fromkeys(("kubernetes", "pydantic", "yaml", "dateutil"), "kubectl")


def _missing_extra(error: ModuleNotFoundError, *, extras: dict[str, str]) -> int:
    top = (error.name or "").split(".")[0]
    extra = extras.get(top)
    if extra is None:
        raise error
    sys.stderr.write(
        f"error: this command needs the {extra!r} extra ({top} is not installed): "
        f"pip install '{DISTRIBUTION}[{extra}]'\n"
    )
    return 1


def agentauth() -> int:
    """``agentauth`` (controller, token service, dev): needs ``operator`` (``dev`` for dev)."""
    # Subcommands import their server modules lazily, so the whole run is inside the try.
    try:
        from agentauth import cli

        return cli.main()
    except ModuleNotFoundError as error:
        return _missing_extra(error, extras=_OPERATOR | _DEV)


def kubectl_agentauth() -> int:
    """``kubectl-agentauth`` (the kubectl plugin): needs the ``kubectl`` extra."""
    try:
        from agentauth import kubectl_plugin

        return kubectl_plugin.main()
    except ModuleNotFoundError as error:
        return _missing_extra(error, extras=_KUBECTL)
