"""Running the app: `serve(cfg)` blocks (the stage function); `running_server` serves in a background
thread on loopback (tests, benchmarks)."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator

from codetune.config import Config

log = logging.getLogger("codetune.serve")


def _uvicorn_server(app: object, host: str, port: int, log_level: str = "info") -> object:
    import uvicorn

    # uvicorn's own access log is off: the app writes a structured one (see serve.access_log).
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        access_log=False,
        log_level=log_level,
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(cfg: Config) -> None:
    """Serve `cfg.serve.models` over HTTP until interrupted: the OpenAI-compatible API under /v1 and
    the web playground at /."""
    from codetune.serve.app import create_app

    s = cfg.serve  # limits checked when the config loaded (config.validate)
    app = create_app(cfg)
    if not app.state.codetune.keys and not _is_loopback(s.host):
        logging.getLogger("uvicorn.error").warning(
            "serving on %s without API keys: anyone who can reach this address can use it "
            "(set --api-key or serve.api_keys_file)",
            s.host,
        )
    for model in app.state.codetune.models.values():
        logging.getLogger("uvicorn.error").info(
            "serving %r: %s (%s)", model.name, model.source, model.backend.name
        )
    logging.getLogger("uvicorn.error").info("playground: http://%s:%d/", s.host, s.port)
    server = _uvicorn_server(app, s.host, s.port)
    server.run()  # type: ignore[attr-defined]


@contextlib.contextmanager
def running_server(app: object, host: str = "127.0.0.1", log_level: str = "warning") -> Iterator[str]:
    """Serve `app` from a background thread on a free port; yields its base URL, stops on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = _uvicorn_server(app, host, port, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)  # type: ignore[attr-defined]
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # type: ignore[attr-defined]
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)
        sock.close()
