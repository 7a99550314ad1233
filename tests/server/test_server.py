import json
from concurrent.futures import ThreadPoolExecutor

import pytest


SYSTEM = {"role": "system", "content": "You are in the middle of a room. Looking quickly around you, you see a cabinet 1."}


def _chat(user):
    return [SYSTEM, {"role": "user", "content": user}]


def _reference(tiny_dir, prompts, max_tokens):
    """Greedy answers of a separate engine, each prompt encoded from scratch."""
    from duomem_fast import Engine

    ref = Engine.from_pretrained(str(tiny_dir))
    out = []
    for messages in prompts:
        text = ref.render_chat(messages, add_generation_prompt=True)
        out.append(ref.session(ref.prefix(text)).generate(max_tokens, temperature=0.0))
    return out


def test_models_lists_the_engine(call, server):
    url, _ = server
    status, _, body = call(url + "/models")
    assert status == 200 and body["data"][0]["id"] == "tiny-llama"


def test_eight_concurrent_clients_get_their_own_correct_answers(call, server, tiny_dir):
    url, _ = server
    prompts = [_chat(f"take apple {i} from countertop {i + 1}") for i in range(8)]
    want = _reference(tiny_dir, prompts, 6)
    assert len(set(want)) > 1                      # different prompts, different answers: a mix-up would show

    def ask(messages):
        return call(url + "/chat/completions", {"messages": messages, "max_tokens": 6, "temperature": 0})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, prompts))
    assert [a[0] for a in answers] == [200] * 8
    assert [a[2]["choices"][0]["message"]["content"] for a in answers] == want
    assert all(a[2]["usage"]["completion_tokens"] == 6 for a in answers)


def test_second_request_on_a_shared_prefix_encodes_only_new_tokens(call, server):
    url, engine = server
    first = _chat("go to cabinet 1")
    s1, h1, b1 = call(url + "/chat/completions", {"messages": first, "max_tokens": 4, "temperature": 0})
    assert s1 == 200 and b1["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    n1 = b1["usage"]["prompt_tokens"]
    second = first + [{"role": "assistant", "content": "open cabinet 1"}, {"role": "user", "content": "look"}]
    encoded_before = engine.stats.tokens_encoded
    s2, h2, b2 = call(url + "/chat/completions", {"messages": second, "max_tokens": 4, "temperature": 0})
    n2, cached = b2["usage"]["prompt_tokens"], b2["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert s2 == 200 and cached == n1 and n2 > n1
    assert int(h2["X-Cached-Tokens"]) == cached and int(h2["X-New-Tokens"]) == n2 - n1
    # measured in the engine: the prompt pass encoded only the new tokens (decode adds the generated ones)
    assert engine.stats.tokens_encoded - encoded_before <= (n2 - n1) + 4


def test_stream_matches_the_plain_answer(call, server):
    url, _ = server
    body = {"messages": _chat("heat potato 1 with microwave 1"), "max_tokens": 7, "temperature": 0}
    _, _, plain = call(url + "/chat/completions", body)
    status, headers, text = call(url + "/chat/completions",
                                 {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"]["completion_tokens"] == 7
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"


def test_completions_endpoint(call, server):
    url, engine = server
    status, _, body = call(url + "/completions", {"prompt": "take apple 1", "max_tokens": 5, "temperature": 0})
    assert status == 200 and body["object"] == "text_completion"
    assert body["choices"][0]["text"] == engine.session(engine.prefix("take apple 1")).generate(5)


@pytest.mark.parametrize("path,body,raw,status,param", [
    ("/chat/completions", None, b"{not json", 400, None),
    ("/chat/completions", {"messages": []}, None, 400, "messages"),
    ("/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, None, 400, "messages[0].role"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 2}, None, 400, "n"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}, None, 400,
     "max_tokens"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": 9}, None, 400,
     "temperature"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "x"}], "model": "gpt-9"}, None, 404, "model"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "x" * 4000}]}, None, 400, "messages"),
    ("/completions", {"prompt": 3}, None, 400, "prompt"),
    ("/nope", {}, None, 404, None),
])
def test_bad_requests_get_the_openai_error_shape(call, server, path, body, raw, status, param):
    url, _ = server
    got, _, err = call(url + path, body, raw=raw)
    assert got == status and set(err["error"]) == {"message", "type", "param", "code"}
    assert err["error"]["param"] == param
    ok, _, _ = call(url + "/chat/completions", {"messages": _chat("look"), "max_tokens": 1})
    assert ok == 200                               # the server is still answering
