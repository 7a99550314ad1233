"""Chat turns: the model's own template, incremental appends equal to rendering the whole history."""
import pytest

from duomem_fast import Engine


@pytest.fixture(scope="module")
def engine(tiny_dirs):
    return Engine.from_pretrained(tiny_dirs["mistral"])


def _full_ids(engine, messages, gen_prompt=False):
    return engine.encode(engine.render_chat(messages, add_generation_prompt=gen_prompt))


def test_incremental_turns_equal_full_render(engine):
    conv = engine.chat([{"role": "system", "content": "You are an agent. Playbook: take, then move."}])
    prefix_len = len(conv.session.prefix)
    n = conv.add_user("You see a fridge 1.")
    assert n == len(conv.session.tokens)
    idx, scores = conv.choose(["go to fridge 1", "take apple 1 from countertop 2"])
    assert len(scores) == 2 and idx == max(range(2), key=scores.__getitem__)
    conv.add_user("The fridge 1 is closed.")
    assert conv.session.token_ids == _full_ids(engine, conv.messages)
    assert len(conv.session.prefix) == prefix_len  # the leading messages stay one shared prefix
    assert conv.stats.tokens_reused >= prefix_len


def test_reply_joins_history(engine):
    conv = engine.chat([{"role": "system", "content": "Be brief."}])
    conv.add_user("hello")
    text = conv.reply(max_new_tokens=6)
    assert conv.messages[-1] == {"role": "assistant", "content": text}
    conv.add_user("next")
    rendered = engine.render_chat(conv.messages)
    assert engine.decode(conv.session.token_ids) == rendered


def test_same_leading_messages_share_the_prefix(engine):
    system = [{"role": "system", "content": "Shared playbook text."}]
    a, b = engine.chat(system), engine.chat(system)
    assert a.session.prefix is b.session.prefix


def test_template_rewrite_rewinds_own_tokens(engine):
    conv = engine.chat([{"role": "system", "content": "sys"}])
    conv.add_user("first")
    conv.messages[-1]["content"] = "edited"  # a template (or caller) that rewrites earlier text
    conv.add_user("second")
    assert conv.session.token_ids == _full_ids(engine, conv.messages)


def test_missing_chat_template_is_named(tiny_dirs, tmp_path):
    import shutil

    d = shutil.copytree(tiny_dirs["llama"], tmp_path / "m")
    (d / "chat_template.jinja").unlink(missing_ok=True)
    eng = Engine.from_pretrained(d)
    eng.tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        eng.chat([{"role": "user", "content": "x"}])
