"""The serving stage: an OpenAI-compatible code-completion API and a web playground.

    from codetune.serve import serve, create_app
    serve(cfg)                      # blocks; `codetune serve CONFIG`
    app = create_app(cfg)           # the FastAPI app (tests: create_app(cfg, backends={name: backend}))

Endpoints: POST /v1/completions (suffix = fill-in-the-middle), POST /v1/chat/completions, GET /v1/models,
POST /v1/generate (description -> code, for the playground), GET /health, and the playground at /.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["create_app", "running_server", "serve"]

if TYPE_CHECKING:
    from codetune.serve.app import create_app
    from codetune.serve.server import running_server, serve


def __getattr__(name: str) -> Any:  # FastAPI and the backends load only when the server is used
    if name == "create_app":
        from codetune.serve.app import create_app

        return create_app
    if name in ("serve", "running_server"):
        from codetune.serve import server

        return getattr(server, name)
    raise AttributeError(f"module 'codetune.serve' has no attribute {name!r}")
