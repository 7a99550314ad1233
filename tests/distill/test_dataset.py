import pytest
from transformers import AutoTokenizer

from duomem_fast.alfworld.prompts import PLAYBOOK_HEADER, SYSTEM_PROMPT
from duomem_fast.distill.dataset import IGNORE, encode_messages, encode_record, episode_messages

from helpers import records


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def test_messages_are_the_agents_context():
    rec = records()[0]
    msgs = episode_messages(rec)
    assert msgs[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert msgs[1]["content"] == rec["observations"][0].strip()
    assert [m["content"] for m in msgs[2::2]] == rec["actions"]
    assert [m["content"] for m in msgs[3::2]] == rec["observations"][1:len(rec["actions"])]
    after = episode_messages(rec, playbook="PB", placement="after_obs")
    assert after[0]["content"] == SYSTEM_PROMPT and after[1]["content"].endswith(f"{PLAYBOOK_HEADER}\nPB")
    assert episode_messages(rec, playbook="PB")[0]["content"].endswith("PB")


def test_ids_equal_the_rendered_chat_and_labels_cover_commands_only(tok):
    rec = records()[3]
    ex = encode_record(tok, rec, 100_000)
    full = tok(tok.apply_chat_template(episode_messages(rec), tokenize=False), add_special_tokens=False)["input_ids"]
    assert ex.input_ids == full[:len(ex.input_ids)] and len(full) - len(ex.input_ids) <= 1   # the final "\n"
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    target_text = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE])
    assert target_text == "".join(a + "<|im_end|>" for a in rec["actions"])
    assert all(lab in (IGNORE, t) for t, lab in zip(ex.input_ids, ex.labels)) and ex.labels[-1] == eot


def test_truncation_keeps_the_start(tok):
    rec = records()[0]
    full = encode_record(tok, rec, 100_000)
    cut = encode_record(tok, rec, len(full.input_ids) - 40)
    assert cut.truncated and cut.input_ids == full.input_ids[:len(cut.input_ids)]
    assert 0 < cut.n_targets < full.n_targets


def test_bad_records_and_lengths(tok):
    rec = records()[0]
    with pytest.raises(ValueError, match="0 actions"):
        episode_messages({**rec, "actions": []})
    with pytest.raises(ValueError, match="max_len"):
        encode_messages(tok, episode_messages(rec), 4)


def test_detours_stay_in_context_without_loss(tok):
    rec = {**records()[2], "task": "put a clean mug in cart."}
    acts = ["go to shelf 1", "take keychain 1 from shelf 1", "look", "move keychain 1 to shelf 1", "go to cabinet 1",
            "take mug 1 from cabinet 1", "go to sinkbasin 1", "clean mug 1 with sinkbasin 1", "go to cart 1",
            "move mug 1 to cart 1"]
    rec = {**rec, "actions": acts, "observations": [rec["observations"][0]] + [f"obs {i}" for i in range(len(acts))]}
    ex = encode_record(tok, rec, 100_000)
    learned = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE])
    keep = [a for i, a in enumerate(acts) if i not in (1, 2, 3)]
    assert learned == "".join(a + "<|im_end|>" for a in keep)
    assert ex.input_ids == encode_record(tok, rec, 100_000, skip_detours=False).input_ids
