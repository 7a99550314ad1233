"""OpenAI-compatible HTTP server over the engine: `make_server(engine, host, port)` or `serve(...)`."""
from __future__ import annotations

import sys

from .app import make_server

__all__ = ["make_server", "serve"]


def serve(model=None, adapter=None, merge_lora: bool = False, dtype=None, host: str = "127.0.0.1", port: int = 8000,
          model_name: str | None = None, verbose: bool = True, weight_dtype=None) -> None:
    """Load the engine and serve until interrupted."""
    from ..engine import Engine

    engine = Engine.from_pretrained(model=model, adapter=adapter, merge_lora=merge_lora, dtype=dtype,
                                    weight_dtype=weight_dtype)
    server = make_server(engine, host, port, model_name, verbose)
    h, p = server.server_address[:2]
    print(f"serving {server.RequestHandlerClass.backend.model_id} on http://{h}:{p}/v1 "
          f"(chat/completions, completions, models; stream=true for SSE)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
