import json
import threading
import urllib.error
import urllib.request

import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from duomem_fast.model.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", "llama")


@pytest.fixture(scope="module")
def server(tiny_dir):
    """(base_url, engine) of a server on 127.0.0.1 with an ephemeral port, over a fresh tiny engine per module.

    Tests use prompts of their own, so the prefix cache state of one does not change another's figures."""
    from duomem_fast import Engine
    from duomem_fast.server import make_server

    engine = Engine.from_pretrained(str(tiny_dir))
    srv = make_server(engine, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", engine
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def call():
    return _call


def _call(url: str, body=None, method: str | None = None, raw: bytes | None = None):
    """(status, headers, parsed JSON or raw text) without raising on HTTP errors."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, headers, payload = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, headers, payload = e.code, e.headers, e.read()
    try:
        return status, headers, json.loads(payload)
    except json.JSONDecodeError:
        return status, headers, payload.decode()
