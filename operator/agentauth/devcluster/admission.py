"""Admission webhooks (interface; body in progress)."""

from __future__ import annotations

from typing import Any

from agentauth.devcluster import types


class AdmissionDenied(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


class AdmissionChain:
    def __init__(self, *, reader: types.ObjectReader) -> None:
        self._reader = reader

    async def mutate(
        self,
        *,
        operation: str,
        attributes: types.RequestAttributes,
        kind: dict[str, Any],
        obj: dict[str, Any] | None,
        old_obj: dict[str, Any] | None,
        user: types.UserInfo,
        dry_run: bool,
    ) -> dict[str, Any] | None:
        raise NotImplementedError

    async def validate(
        self,
        *,
        operation: str,
        attributes: types.RequestAttributes,
        kind: dict[str, Any],
        obj: dict[str, Any] | None,
        old_obj: dict[str, Any] | None,
        user: types.UserInfo,
        dry_run: bool,
    ) -> None:
        raise NotImplementedError
