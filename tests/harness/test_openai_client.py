import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from duomem_fast.harness.chat_policy import ChatPolicy, match_action
from duomem_fast.harness.openai_client import APIError, ClientConfig, OpenAIClient


class _Flaky(BaseHTTPRequestHandler):
    """Fails the first `fail` POSTs with `status`, then answers; counts requests."""
    fail, status, seen = 0, 503, []

    def log_message(self, *a):
        pass

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"data": [{"id": "m1"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        if len(type(self).seen) <= type(self).fail:
            return self._send(type(self).status, {"error": {"message": "busy"}})
        self._send(200, {"choices": [{"message": {"content": "Action: put apple 1 in fridge 1."}}],
                         "usage": {"prompt_tokens": 10, "completion_tokens": 3,
                                   "prompt_tokens_details": {"cached_tokens": 4}}})


@pytest.fixture
def flaky():
    def start(fail, status):
        handler = type("H", (_Flaky,), {"fail": fail, "status": status, "seen": []})
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/v1", handler
    servers = []
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_retries_transient_errors_then_succeeds(flaky):
    url, h = flaky(2, 503)
    client = OpenAIClient(ClientConfig(url, backoff=0.01, max_retries=3))
    text, usage, _ = client.chat([{"role": "user", "content": "hi"}])
    assert client.config.model == "m1" and len(h.seen) == 3 and text.startswith("Action:")
    assert h.seen[-1]["model"] == "m1"


def test_gives_up_after_max_retries_and_does_not_retry_client_errors(flaky):
    url, h = flaky(10, 503)
    with pytest.raises(APIError, match="after 3 attempts"):
        OpenAIClient(ClientConfig(url, model="m1", backoff=0.01, max_retries=2)).chat([])
    url, h = flaky(10, 400)
    with pytest.raises(APIError, match="HTTP 400"):
        OpenAIClient(ClientConfig(url, model="m1", backoff=0.01, max_retries=2)).chat([])
    assert len(h.seen) == 1


def test_unreachable_endpoint_and_bad_config_name_the_value():
    with pytest.raises(APIError, match="127.0.0.1:9"):
        OpenAIClient(ClientConfig("http://127.0.0.1:9/v1", model="m", timeout=1, backoff=0.01, max_retries=1)).chat([])
    with pytest.raises(ValueError, match="base_url"):
        ClientConfig("localhost:8000")
    with pytest.raises(ValueError, match="rate"):
        ClientConfig("http://x", rate=-1)


def test_chat_policy_maps_answers_to_admissible_commands(flaky):
    assert match_action("Action: put apple 1 in fridge 1.", ["go to fridge 1", "move apple 1 to fridge 1"]) \
        == "move apple 1 to fridge 1"
    assert match_action("> Go to Fridge 1", ["look", "go to fridge 1"]) == "go to fridge 1"
    assert match_action("gibberish", ["look"]) == "look"
    url, h = flaky(0, 503)
    client = OpenAIClient(ClientConfig(url))
    policy = ChatPolicy(client.chat, "t", history=2)
    policy.begin("put an apple in fridge", "pick_and_place_simple", "You are in a room.", ["look"])
    for _ in range(4):
        assert policy.act("Nothing happens.", ["look", "move apple 1 to fridge 1"]) == "move apple 1 to fridge 1"
    assert policy.usage() == {"tokens_in": 24, "tokens_reused": 16, "tokens_out": 12,
                              "model_seconds": policy.usage()["model_seconds"]}
    roles = [m["role"] for m in h.seen[-1]["messages"]]
    assert roles == ["system", "user", "assistant", "user"]     # history=2: the last 2 user turns
    assert "You are in a room." in h.seen[-1]["messages"][1]["content"]            # the first observation stays


def test_rate_limit_spaces_requests_across_threads(monkeypatch):
    import duomem_fast.harness.openai_client as oc

    clock = {"t": 100.0}
    slept = []
    monkeypatch.setattr(oc.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(oc.time, "sleep", lambda s: slept.append(round(s, 6)))
    client = OpenAIClient(ClientConfig("http://127.0.0.1:1/v1", model="m", rate=4.0))
    for _ in range(3):
        client._wait_rate()
    assert slept == [0.0, 0.25, 0.5]       # 4 requests per second: each waits for its slot
    clock["t"] = 200.0                     # long idle: no debt carried over
    client._wait_rate()
    assert slept[-1] == 0.0
