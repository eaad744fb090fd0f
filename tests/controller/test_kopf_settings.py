"""What the controller relies on in Kopf's settings.

``main.configure`` sets no ``batch_window``: the Kopf we run dispatches watch events without a
time-based batch (the setting survives only as a deprecated no-op), so a JIT decision reaches the
agent without a batching delay. If an installed Kopf batches again, this fails and ``configure``
must set a small window.
"""

from __future__ import annotations

from pathlib import Path

import kopf
import pytest

KOPF_SOURCE = Path(kopf.__file__).parent


def test_batch_window_is_a_deprecated_no_op() -> None:
    settings = kopf.OperatorSettings()
    with pytest.warns(DeprecationWarning, match="Time-based event batching was removed"):
        settings.queueing.batch_window = 0.01
    # Only the settings class mentions the window: nothing in Kopf reads it any more.
    readers = [
        str(path.relative_to(KOPF_SOURCE))
        for path in KOPF_SOURCE.rglob("*.py")
        if "batch_window" in path.read_text(encoding="utf-8")
    ]
    assert readers == ["_cogs/configs/configuration.py"]
