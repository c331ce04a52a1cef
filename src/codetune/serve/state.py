"""What every request handler shares: the served models, the accepted keys, admission and limits, and
the OpenAI-shaped error. `app.py` builds it; `routes.py` reads it."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse

from codetune.config import Config, PromptConfig
from codetune.models.backends.base import Backend
from codetune.serve.admission import Admission
from codetune.serve.batching import Batcher

STATIC_DIR = Path(__file__).parent / "static"


class ApiError(Exception):
    """An error answered in OpenAI's format: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


@dataclass
class ServedModel:
    """One model clients can ask for by name, and the prompt settings it was trained with."""

    name: str
    backend: Backend
    prompt: PromptConfig
    source: str
    created: int
    batcher: Batcher  # shared by every name served from the same backend


class ServerState:
    """What every request needs: the models, the accepted keys, admission, limits and defaults."""

    def __init__(self, cfg: Config, models: dict[str, ServedModel], keys: list[str]) -> None:
        self.cfg, self.models, self.keys = cfg, models, keys
        s = cfg.serve
        self.admission = Admission(s.max_concurrent, s.max_queue, s.request_timeout_s)

    def model(self, name: str) -> ServedModel:
        if not name and len(self.models) == 1:
            return next(iter(self.models.values()))
        if name in self.models:
            return self.models[name]
        raise ApiError(
            404,
            f"model {name!r} is not served here; served models: {', '.join(self.models)}",
            param="model",
            code="model_not_found",
        )

    def check_key(self, authorization: str | None) -> None:
        """401 unless the Authorization header carries one of the keys (when keys are configured)."""
        if not self.keys:
            return
        challenge = {"WWW-Authenticate": "Bearer"}
        if not authorization:
            raise ApiError(
                401,
                "missing API key: send the header 'Authorization: Bearer YOUR_KEY'",
                code="missing_api_key",
                headers=challenge,
            )
        scheme, _, token = authorization.partition(" ")
        given = token.strip().encode()
        ok = False
        for key in self.keys:  # compare with every key, in constant time, whatever matches first
            ok |= hmac.compare_digest(given, key.encode())
        if scheme.lower() != "bearer" or not ok:
            raise ApiError(401, "invalid API key", code="invalid_api_key", headers=challenge)
