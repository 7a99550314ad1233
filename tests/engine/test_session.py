"""Prefix store, sessions, scoring, batching, forks, overflow, persistence, against full-recompute references."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from duomem_fast import Engine


@pytest.fixture(scope="module")
def engine(tiny_dirs):
    return Engine.from_pretrained(tiny_dirs["qwen3"])


@pytest.fixture(scope="module")
def hf(tiny_dirs):
    return AutoModelForCausalLM.from_pretrained(tiny_dirs["qwen3"]).eval()


def _ids(n, seed=0):
    return torch.randint(3, 380, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _hf_logprob(hf, context, cont) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(hf(torch.tensor([context + cont])).logits[0].float(), -1)
    return float(sum(logp[len(context) - 1 + i, t] for i, t in enumerate(cont)))


def test_same_tokens_same_handle_and_counts(engine):
    ids = _ids(30)
    before = engine.stats.copy()
    p = engine.prefix(ids)
    assert engine.prefix(ids) is p
    delta = engine.stats - before
    assert delta.tokens_encoded == 30 and delta.tokens_reused == 30


def test_extension_encodes_only_new_tokens(engine, hf):
    ids = _ids(40, seed=1)
    engine.prefix(ids[:25])
    before = engine.stats.copy()
    p = engine.prefix(ids)
    assert (engine.stats - before).tokens_encoded == 15
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(p.logits, ref, atol=2e-5, rtol=0)


def test_lru_evicts_beyond_budget(tiny_dirs):
    eng = Engine.from_pretrained(tiny_dirs["llama"], prefix_budget_bytes=40_000)
    a = eng.prefix(_ids(20, 2))  # 2 layers * 20 tok * 2 heads * 16 * 4 B * 2 = 10 KiB
    eng.prefix(_ids(60, 3))
    eng.prefix(_ids(60, 4))
    assert a.tokens not in eng.store and len(eng.store) >= 1
    assert eng.store.nbytes <= 40_000
    with pytest.raises(ValueError, match="budget_bytes"):
        Engine.from_pretrained(tiny_dirs["llama"], prefix_budget_bytes=0)


def test_session_shares_prefix_kv_and_appends_only_new(engine, hf):
    ids = _ids(50, 5)
    p = engine.prefix(ids[:30])
    s = engine.session(p)
    assert s.prefix.k.data_ptr() == p.k.data_ptr()
    assert s.append(ids[30:42]) == 12 and s.append(ids[42:]) == 8
    assert s.stats.tokens_encoded == 20 and s.stats.tokens_reused == 30 + 42
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(s.logits, ref, atol=2e-5, rtol=0)


def test_score_equals_full_recompute(engine, hf):
    ids = _ids(45, 6)
    s = engine.session(engine.prefix(ids[:30]))
    s.append(ids[30:])
    cands = [_ids(1, 7), _ids(4, 8), _ids(9, 9)]
    scores = s.score(cands)
    for c, got in zip(cands, scores):
        assert got == pytest.approx(_hf_logprob(hf, ids, c), abs=1e-3)
    assert len(s) == 45  # scoring does not change the context


def test_score_after_generate_sees_pending_token(engine, hf):
    ids = _ids(20, 10)
    s = engine.session(ids)
    s.generate(3)
    cand = _ids(3, 11)
    assert s.score([cand])[0] == pytest.approx(_hf_logprob(hf, s.token_ids, cand), abs=1e-3)


def test_fork_branches_independently(engine):
    s = engine.session(_ids(25, 12))
    s.append(_ids(5, 13))
    f = s.fork()
    assert f.generate(6) == s.generate(6)
    f.append(_ids(3, 14))
    assert len(f) == len(s) + 3 and f.tokens[:len(s.tokens)] == s.tokens


def test_generate_batch_equals_one_by_one(engine):
    p = engine.prefix(_ids(30, 15))
    suffixes = [_ids(3, 16), _ids(11, 17), _ids(7, 18)]
    singles, batch = [engine.session(p) for _ in suffixes], [engine.session(p) for _ in suffixes]
    for a, b, suf in zip(singles, batch, suffixes):
        a.append(suf)
        b.append(suf)
    want = [s.generate(9) for s in singles]
    assert engine.generate_batch(batch, 9) == want
    assert [b.tokens for b in batch] == [a.tokens for a in singles]
    cand = [_ids(2, 19), _ids(5, 20)]
    got = engine.score_batch(batch, [cand] * 3)
    for row, a in zip(got, singles):
        assert row == pytest.approx(a.score(cand), abs=1e-4)


def test_generate_batch_refuses_mixed_prefixes(engine):
    with pytest.raises(ValueError, match="same prefix"):
        engine.generate_batch([engine.session(_ids(5, 21)), engine.session(_ids(6, 22))], 2)


def test_sampling_is_seeded_and_stop_strings_cut(engine):
    s = engine.session(_ids(20, 23))
    a, b = s.fork().generate(8, temperature=1.0, seed=3), s.fork().generate(8, temperature=1.0, seed=3)
    assert a == b
    full = s.fork().generate(8)
    stop = full[2:4]
    cut = s.fork().generate(8, stop=[stop])
    assert stop and cut == full[:full.find(stop)]


def test_overflow_raises(engine):
    limit = engine.config.max_context
    with pytest.raises(ValueError, match="exceeds the model's limit"):
        engine.prefix(_ids(limit + 1, 24))
    s = engine.session(_ids(limit - 4, 25))
    with pytest.raises(ValueError, match="exceeds the model's limit"):
        s.generate(10)
    with pytest.raises(ValueError, match="exceeds the model's limit"):
        s.append(_ids(5, 26))


def test_bad_arguments_are_named(engine):
    s = engine.session(_ids(5, 27))
    with pytest.raises(ValueError, match="temperature"):
        s.generate(3, temperature=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        s.generate(0)
    with pytest.raises(ValueError, match="out of range"):
        s.append([10**7])
    with pytest.raises(ValueError, match="at least one candidate"):
        s.score([])
    with pytest.raises(ValueError, match="context is empty"):
        engine.session().generate(2)


def test_prefix_saves_and_loads_with_identity(engine, tiny_dirs, tmp_path):
    ids = _ids(33, 28)
    p = engine.prefix(ids)
    engine.save_prefix(p, tmp_path / "p.safetensors")
    fresh = Engine.from_pretrained(tiny_dirs["qwen3"])
    q = fresh.load_prefix(tmp_path / "p.safetensors", expect=ids)
    assert q.tokens == p.tokens and fresh.prefix(ids) is q
    assert fresh.session(q).generate(5) == engine.session(p).generate(5)
    with pytest.raises(ValueError, match="different tokens"):
        fresh.load_prefix(tmp_path / "p.safetensors", expect=ids[:-1])
    with pytest.raises(ValueError, match="does not exist"):
        fresh.load_prefix(tmp_path / "nope.safetensors")
    for other in (Engine.from_pretrained(tiny_dirs["qwen3"], dtype="bfloat16"), Engine.from_pretrained(tiny_dirs["qwen2"])):
        with pytest.raises(ValueError, match="refused"):
            other.load_prefix(tmp_path / "p.safetensors")


def test_adapter_and_merge_change_fingerprint(tiny_dirs, tmp_path, engine):
    from duomem_fast.model.testing import make_random_adapter

    ad = make_random_adapter(tiny_dirs["qwen3"], tmp_path / "ad", r=2)
    prints = {engine.fingerprint, Engine.from_pretrained(tiny_dirs["qwen3"], adapter=ad).fingerprint,
              Engine.from_pretrained(tiny_dirs["qwen3"], adapter=ad, merge_lora=True).fingerprint}
    assert len(prints) == 3
    assert Engine.from_pretrained(tiny_dirs["qwen3"]).fingerprint == engine.fingerprint


def test_bf16_tracks_fp32(tiny_dirs):
    ids = _ids(30, 29)
    a = Engine.from_pretrained(tiny_dirs["llama"]).session(ids).logits
    b = Engine.from_pretrained(tiny_dirs["llama"], dtype="bfloat16").session(ids).logits
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    with pytest.raises(ValueError, match="unsupported dtype"):
        Engine.from_pretrained(tiny_dirs["llama"], dtype="float8")


def test_bf16_weights_under_fp32_activations(tiny_dirs, tmp_path):
    """weight_dtype=bfloat16: the projections are stored in bf16, everything else stays fp32. Rows the GEMV takes
    (<= 16 tokens) equal an fp32 engine whose weights were rounded through bf16; longer appends round x to bf16 for
    the GEMM. Decode in one native call and in the eager loop agree; the identity names the weight dtype."""
    from duomem_fast.engine.build import _cast_linears
    from duomem_fast.model.testing import make_random_adapter

    ad = make_random_adapter(tiny_dirs["llama"], tmp_path / "ad", r=4)
    mixed = Engine.from_pretrained(tiny_dirs["llama"], adapter=ad, weight_dtype="bfloat16")
    assert mixed.decoder.w.layers[0].qkv.dtype == torch.bfloat16 and mixed.decoder.w.embed.dtype == torch.float32
    assert mixed.decoder.w.layers[0].lora["qkv"].a.dtype == torch.bfloat16  # unmerged factors follow the weights
    rounded = Engine.from_pretrained(tiny_dirs["llama"], adapter=ad)
    _cast_linears(rounded.decoder.w, torch.bfloat16)  # rounded through bf16, stored and computed in fp32
    _cast_linears(rounded.decoder.w, torch.float32)
    short, long = _ids(12, 40), _ids(40, 41)
    torch.testing.assert_close(mixed.session(short).logits, rounded.session(short).logits, atol=1e-4, rtol=1e-4)
    a, b = mixed.session(long).logits, rounded.session(long).logits
    assert (a - b).abs().max() < 0.05 * b.abs().max()
    eager = Engine.from_pretrained(tiny_dirs["llama"], adapter=ad, weight_dtype="bfloat16", fused_decode=False)
    assert mixed.session(short).generate(8) == eager.session(short).generate(8)
    prints = {mixed.fingerprint, rounded.fingerprint,
              Engine.from_pretrained(tiny_dirs["llama"], adapter=ad, dtype="bfloat16").fingerprint}
    assert len(prints) == 3
    with pytest.raises(ValueError, match="only bfloat16 weights under float32 activations"):
        Engine.from_pretrained(tiny_dirs["llama"], dtype="bfloat16", weight_dtype="float32")


def test_attention_paths_agree_over_long_own_history(tiny_dirs):
    """Appends past 256 own tokens (and T >= 48 rows per KV head): the native kernels equal torch's flash kernel."""
    eng = {impl: Engine.from_pretrained(tiny_dirs["llama"], attn_impl=impl) for impl in ("flash", "ops")}
    sess = {impl: e.session(e.prefix(_ids(30, 40))) for impl, e in eng.items()}
    for k in range(6):
        for s in sess.values():
            s.append(_ids(55, 41 + k))
        torch.testing.assert_close(sess["ops"].logits, sess["flash"].logits, atol=1e-4, rtol=1e-4)
    assert sess["ops"].generate(6) == sess["flash"].generate(6)


@pytest.mark.parametrize("impl", ["torch", "ops"])
def test_attention_paths_agree_end_to_end(tiny_dirs, engine, impl):
    other = Engine.from_pretrained(tiny_dirs["qwen3"], attn_impl=impl)
    ids, cands = _ids(40, 30), [_ids(3, 31), _ids(6, 32)]
    a, b = engine.session(ids[:25]), other.session(ids[:25])
    a.append(ids[25:])
    b.append(ids[25:])
    assert a.generate(8) == b.generate(8)
    assert a.score(cands) == pytest.approx(b.score(cands), abs=1e-4)


def test_damaged_prefix_file_is_refused(engine, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match="not a readable duomem prefix"):
        engine.load_prefix(bad)
    from safetensors.torch import save_file

    save_file({"k": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"), metadata={"format": "other"})
    with pytest.raises(ValueError, match="has format 'other'"):
        engine.load_prefix(tmp_path / "foreign.safetensors")


def test_unknown_attn_impl_is_named(tiny_dirs):
    with pytest.raises(ValueError, match="unknown attn_impl 'cuda'"):
        Engine.from_pretrained(tiny_dirs["llama"], attn_impl="cuda")


def test_lookahead_is_exact_greedy(engine):
    """Prompt-lookup drafts change nothing but the number of passes: same tokens, same state after."""
    rep = _ids(6, 33)
    ids = rep * 4 + _ids(5, 34) + rep[:3]  # repetitive context: drafts get proposed and partly accepted
    plain, fast = engine.session(ids), engine.session(ids)
    assert fast.generate(15, lookahead=4) == plain.generate(15, lookahead=0)
    assert fast.tokens == plain.tokens
    tail = _ids(4, 35)
    plain.append(tail)
    fast.append(tail)
    torch.testing.assert_close(fast.logits, plain.logits, atol=2e-5, rtol=0)
    stop = engine.decode(plain.tokens[-6:-4])
    assert fast.generate(12, stop=[stop], lookahead=3) == plain.generate(12, stop=[stop], lookahead=0)
    with pytest.raises(ValueError, match="lookahead"):
        Engine(engine.decoder, engine.tokenizer, engine.fingerprint, engine.model_dir, lookahead=-1)
