"""HTTP layer: a threaded stdlib server speaking the OpenAI API (/v1/chat/completions, /v1/completions,
/v1/models), SSE streaming, errors in the OpenAI shape. Engine work is serialised by the backend's lock."""
from __future__ import annotations

import json
import sys
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import protocol as P
from .backend import EngineBackend, Result

MAX_BODY = 8 << 20


class Handler(BaseHTTPRequestHandler):
    server_version = "duomem-fast"
    protocol_version = "HTTP/1.1"
    backend: EngineBackend        # set on the subclass made by make_server

    def log_message(self, fmt, *args):       # quiet by default; errors still go to stderr
        if getattr(self.server, "verbose", False):
            super().log_message(fmt, *args)

    def do_GET(self):
        self._safely(self._get)

    def do_POST(self):
        self._safely(self._post)

    def _safely(self, fn):
        try:
            fn()
        except P.APIError as e:
            self.close_connection = True       # the request body may be unread: do not reuse the connection
            self._json(e.status, e.body(), {"Connection": "close"})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:       # never crash the server on a request
            traceback.print_exc(file=sys.stderr)
            err = P.APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error")
            try:
                self._json(500, err.body())
            except OSError:
                pass

    def _get(self):
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            m = {"id": self.backend.model_id, "object": "model", "created": 0, "owned_by": "duomem-fast"}
            return self._json(200, {"object": "list", "data": [m]})
        if path in ("/health", "/v1/health"):
            return self._json(200, {"status": "ok"})
        if path in ("/v1/chat/completions", "/v1/completions"):
            raise P.APIError(405, f"{path} takes POST, not GET")
        raise P.APIError(404, f"unknown path {path!r}", type="not_found_error")

    def _body(self) -> dict:
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise P.APIError(400, "bad Content-Length header") from None
        if n > MAX_BODY:
            raise P.APIError(413, f"request body of {n} bytes exceeds {MAX_BODY}")
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise P.APIError(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise P.APIError(400, "request body must be a JSON object")
        return body

    def _post(self):
        path = self.path.split("?")[0].rstrip("/")
        if path not in ("/v1/chat/completions", "/v1/completions", "/chat/completions", "/completions"):
            raise P.APIError(404, f"unknown path {path!r}", type="not_found_error")
        body = self._body()
        model = body.get("model")
        if model not in (None, "", self.backend.model_id):
            raise P.APIError(404, f"model {model!r} not found; this server has {self.backend.model_id!r}",
                             "model", code="model_not_found")
        params = P.gen_params(body, self.backend.max_context)
        chat = path.endswith("chat/completions")
        prompt = self.backend.render(P.chat_messages(body)) if chat else P.completion_prompt(body)
        rid = P.new_id("chatcmpl" if chat else "cmpl")
        if params.stream:
            return self._stream(rid, chat, prompt, params)
        r = self.backend.complete(prompt, params)
        make = P.chat_response if chat else P.completion_response
        self._json(200, make(rid, self.backend.model_id, r.text, r.finish, _usage(r)), _headers(r))

    def _stream(self, rid: str, chat: bool, prompt: str, params: P.GenParams):
        pieces = self.backend.stream(prompt, params)
        try:
            first = next(pieces)           # errors before the first token still get a JSON error
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            model = self.backend.model_id
            if chat:
                self._event(P.chunk(rid, model, chat, None, None, first=True))
            item = first
            while not isinstance(item, Result):
                self._event(P.chunk(rid, model, chat, item, None))
                item = next(pieces)
            self._event(P.chunk(rid, model, chat, None, item.finish))
            if params.include_usage:
                self._event({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                             "created": int(time.time()), "model": model, "choices": [], "usage": _usage(item)})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        finally:
            pieces.close()                 # releases the engine lock if the client went away

    def _event(self, obj: dict) -> None:
        self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
        self.wfile.flush()

    def _json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


def _usage(r: Result) -> dict:
    return P.usage(r.prompt_tokens, r.cached_tokens, r.completion_tokens)


def _headers(r: Result) -> dict:
    return {"X-Cached-Tokens": str(r.cached_tokens), "X-New-Tokens": str(r.prompt_tokens - r.cached_tokens),
            "X-Model-Seconds": f"{r.seconds:.4f}"}


def make_server(engine, host: str = "127.0.0.1", port: int = 0, model_id: str | None = None,
                verbose: bool = False) -> ThreadingHTTPServer:
    """A ready (not yet serving) server over `engine`; port 0 picks a free port (see server.server_address)."""
    backend = EngineBackend(engine, model_id or _model_id(engine))
    handler = type("BoundHandler", (Handler,), {"backend": backend})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.verbose = verbose
    return server


def _model_id(engine) -> str:
    return getattr(engine, "model_dir", None) and engine.model_dir.name or "duomem-fast"
