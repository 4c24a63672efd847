"""Engine.complete: greedy = Engine.generate, seeded sampling, stops, cancellation (model left as loaded),
prompt logprobs = Engine.loglik, refusals before any work, prefix reuse (same tokens, cached_tokens)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_gemma3, tiny_llama, wrap
from transformers import AttentionInterface

from longreach.engine import Completion, Engine
from longreach.errors import InputError, MemoryBudgetError, SettingError, SpecError, TooLongError
from longreach.prefix_cache import PrefixCache
from longreach.sampling import Cancelled, CancelToken, Sampling

BUILDERS = {"tiny-llama": tiny_llama, "tiny-gemma3": tiny_gemma3}
HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")


def _ids(n: int, seed: int = 0) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _fingerprint(model) -> tuple:
    """What a request could leave behind: every parameter and buffer, hooks, attention implementation."""
    tensors = tuple((name, t.dtype, t.double().sum().item(), t.double().abs().sum().item())
                    for name, t in [*model.named_parameters(), *model.named_buffers()])
    hooks = tuple(sum(len(getattr(m, h)) for h in HOOKS) for m in model.modules())
    return tensors, hooks, model.config._attn_implementation, len(AttentionInterface._global_mapping)


def _logits(model, ids) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits


def sharp_llama(seed: int = 0):
    """tiny-llama with larger attention weights: its attention depends clearly on positions and content
    (the plain random model attends almost uniformly, so a wrong position changes logprobs by ~1e-5)."""
    model = tiny_llama(seed=seed)
    with torch.no_grad():
        for layer in model.model.layers:
            a = layer.self_attn
            for proj, scale in ((a.q_proj, 8.0), (a.k_proj, 8.0), (a.v_proj, 4.0), (a.o_proj, 4.0)):
                proj.weight.mul_(scale)
    return wrap(model, "tiny-llama")


@pytest.fixture(params=sorted(BUILDERS))
def arch(request):
    return request.param


# ------------------------------------------------------------------------------------- greedy, sampled
@pytest.mark.parametrize("spec", ["none", "yarn:factor=2", "self-extend:window=16,group=4,dynamic=false", "snapkv:budget=48,window=8"])
def test_greedy_complete_equals_generate(arch, spec):
    lm = wrap(BUILDERS[arch](), arch)
    engine = Engine(lm)
    for seed in range(3):
        ids = _ids(90, seed)
        expected = engine.generate(spec, ids, 12, stop=set(), chunk_size=32)
        c = engine.complete(spec, ids, 12, stop_ids=set(), chunk_size=32)
        assert isinstance(c, Completion)
        assert c.token_ids == expected and len(expected) == 12
        assert c.finish_reason == "length" and c.prompt_tokens == 90 and c.cached_tokens == 0
        assert c.prompt_steps is None and all(s.logprob is None and s.top is None for s in c.steps)
        assert c.kv_cache_bytes > 0 and c.prefill_seconds > 0 and c.decode_seconds > 0


def test_greedy_logprobs_are_the_argmax_of_the_raw_logits(llama):
    engine = Engine(llama)
    ids = _ids(60, 4)
    c = engine.complete("none", ids, 6, stop_ids=set(), sampling=Sampling(top_logprobs=3))
    full = torch.log_softmax(_logits(llama.model, ids + c.token_ids[:-1])[0].float(), -1)  # (T, V)
    for i, step in enumerate(c.steps):
        row = full[len(ids) - 1 + i]
        assert step.token_id == int(row.argmax()) == step.top[0][0]
        assert step.logprob == pytest.approx(float(row[step.token_id]), abs=1e-4)
        assert [t for t, _ in step.top] == row.topk(3).indices.tolist()


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(llama):
    engine = Engine(llama)
    ids = _ids(50, 1)
    greedy = engine.complete("none", ids, 16, stop_ids=set()).token_ids
    runs = {}
    for seed in range(6):
        s = Sampling(temperature=1.5, top_p=0.95, seed=seed)
        first = engine.complete("none", ids, 16, stop_ids=set(), sampling=s).token_ids
        assert engine.complete("none", ids, 16, stop_ids=set(), sampling=s).token_ids == first
        runs[seed] = first
    assert any(r != greedy for r in runs.values())
    assert len({tuple(r) for r in runs.values()}) > 1  # seeds matter
    assert engine.complete("none", ids, 16, stop_ids=set(), sampling=Sampling(seed=5)).token_ids == greedy


def test_stop_ids_and_on_step_stop_with_finish_reason_stop(llama):
    engine = Engine(llama)
    ids = _ids(40, 2)
    s = Sampling(temperature=1.0, seed=3)
    ref = engine.complete("none", ids, 12, stop_ids=set(), sampling=s).token_ids
    stop = ref[5]
    cut = ref.index(stop)
    c = engine.complete("none", ids, 12, stop_ids={stop}, sampling=s)
    assert c.token_ids == ref[:cut] and c.finish_reason == "stop"  # the stop id is not returned
    seen = []
    c = engine.complete("none", ids, 12, stop_ids=set(), sampling=s, on_step=lambda st: seen.append(st) or len(seen) == 4)
    assert c.token_ids == ref[:4] == [st.token_id for st in seen] and c.finish_reason == "stop"
    c = engine.complete("none", ids, 12, stop_ids=set(), sampling=s, on_step=lambda st: None)
    assert c.token_ids == ref and c.finish_reason == "length"


def test_default_stop_ids_are_the_eos_ids(llama):
    engine = Engine(llama)
    assert engine.eos_ids() == {257}
    ids = _ids(30, 3)
    for seed in range(20):  # sample until an EOS shows up in a free run
        s = Sampling(temperature=2.0, seed=seed)
        free = engine.complete("none", ids, 40, stop_ids=set(), sampling=s).token_ids
        if 257 in free:
            c = engine.complete("none", ids, 40, sampling=s)
            assert c.token_ids == free[:free.index(257)] and c.finish_reason == "stop"
            return
    pytest.skip("no EOS sampled")  # pragma: no cover


# ------------------------------------------------------------------------------------------ cancel
class CancelAt(CancelToken):
    """Cancels itself at its n-th check (1-based): a cancel that arrives mid-request, deterministically."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.checks = n, 0

    def check(self) -> None:
        self.checks += 1
        if self.checks >= self.n:
            self.cancel(f"stopped at check {self.n}")
        super().check()


@pytest.mark.parametrize("spec", ["none", "yarn:factor=2+snapkv:budget=48,window=8", "self-extend:window=16,group=4,dynamic=false",
                                  "longheads:chunk=16,chunks=4,score=query"])
def test_cancel_before_and_during_prefill_and_decode_leaves_the_model_as_loaded(arch, spec):
    lm = wrap(BUILDERS[arch](), arch)
    fresh = BUILDERS[arch]()
    engine = Engine(lm)
    ids = _ids(100, 5)
    expected = engine.complete(spec, ids, 8, stop_ids=set(), chunk_size=16).token_ids
    before = _fingerprint(lm.model)  # after one request: a method class registers its attention once
    done = CancelToken()
    done.cancel("client disconnected")
    with pytest.raises(Cancelled, match="^client disconnected$"):
        engine.complete(spec, ids, 8, stop_ids=set(), chunk_size=16, cancel=done)
    # checks: 1 on entry, 2..8 before the 7 prefill chunks (100 tokens, chunks of 16), then before each
    # decode step's pick and before its forward pass: check n >= 9 has seen (n - 8) // 2 tokens
    for n, tokens in ((2, 0), (5, 0), (8, 0), (9, 0), (10, 1), (13, 2), (18, 5)):
        token = CancelAt(n)
        steps = []
        with pytest.raises(Cancelled, match=f"check {n}"):
            engine.complete(spec, ids, 8, stop_ids=set(), chunk_size=16, cancel=token, on_step=steps.append)
        assert token.checks == n
        assert [st.token_id for st in steps] == expected[:tokens], n
        assert _fingerprint(lm.model) == before, (spec, n)
    assert engine.complete(spec, ids, 8, stop_ids=set(), chunk_size=16).token_ids == expected  # lock released
    token = CancelToken()
    steps = []

    def cancel_after_two(step):
        steps.append(step)
        if len(steps) == 2:
            token.cancel("timeout")

    with pytest.raises(Cancelled, match="timeout"):
        engine.complete(spec, ids, 8, stop_ids=set(), chunk_size=16, cancel=token, on_step=cancel_after_two)
    assert len(steps) == 2
    assert _fingerprint(lm.model) == before
    probe = _ids(70, 9)
    assert torch.equal(_logits(lm.model, probe), _logits(fresh.requires_grad_(False), probe))


# ----------------------------------------------------------------------------------- prompt logprobs
@pytest.mark.parametrize("spec", ["none", "yarn:factor=2", "self-extend:window=16,group=4,dynamic=false"])
def test_prompt_logprobs_equal_loglik(arch, spec):
    lm = wrap(BUILDERS[arch](window=512), arch)
    engine = Engine(lm)
    ids = _ids(300, 6)  # three logprob chunks of 100
    nll = engine.loglik(spec, ids, chunk=64)  # (n-1,)
    c = engine.complete(spec, ids, 0, prompt_logprobs=2, chunk_size=100)
    assert c.steps == [] and c.finish_reason == "length" and c.prompt_tokens == 300
    assert len(c.prompt_steps) == 300 and c.prompt_steps[0] is None
    assert [s.token_id for s in c.prompt_steps[1:]] == ids[1:]
    got = torch.tensor([s.logprob for s in c.prompt_steps[1:]], dtype=torch.float64)
    assert torch.allclose(got, -nll, atol=1e-4)
    for s in c.prompt_steps[1:]:
        assert len(s.top) == 2 and s.top[0][1] >= s.top[1][1] and s.top[0][1] >= s.logprob - 1e-6
    with_gen = engine.complete(spec, ids, 3, prompt_logprobs=0, stop_ids=set())
    assert len(with_gen.steps) == 3 and all(s.top == [] for s in with_gen.prompt_steps[1:])
    assert with_gen.token_ids == engine.generate(spec, ids, 3, stop=set())


def test_max_new_tokens_zero_prefills_only(llama):
    c = Engine(llama).complete("none", _ids(20), 0)
    assert c.steps == [] and c.finish_reason == "length" and c.kv_cache_bytes > 0 and c.decode_seconds >= 0


# ------------------------------------------------------------------------------------------ refusals
def test_refusals_come_before_any_work(llama, monkeypatch):
    engine = Engine(llama)

    def no_session(*args, **kwargs):
        raise AssertionError("a refused request opened a session")

    monkeypatch.setattr(engine, "session", no_session)
    with pytest.raises(TooLongError, match="input is 300 tokens") as err:
        engine.complete("none", _ids(300), 10)
    assert "\n" not in str(err.value) and "--method" in str(err.value)
    with pytest.raises(TooLongError):
        engine.complete("none", _ids(250), 10)  # the tokens to generate count too
    with pytest.raises(MemoryBudgetError):
        engine.complete("none", _ids(100), 10, memory_limit=1)
    with pytest.raises(SettingError, match="use Engine.run"):
        engine.complete("infiniretri:chunk=32,top_k=16", _ids(10), 5)
    with pytest.raises(InputError, match="empty"):
        engine.complete("none", [], 5)
    with pytest.raises(InputError, match="vocabulary"):
        engine.complete("none", [1, 2, 260], 5)
    with pytest.raises(InputError, match="vocabulary"):
        engine.complete("none", [-1, 2], 5)
    with pytest.raises(InputError, match="whole numbers"):
        engine.complete("none", [1, 2.5], 5)
    with pytest.raises(SettingError, match="max_new_tokens"):
        engine.complete("none", [1, 2], -1)
    with pytest.raises(SettingError, match="prompt_logprobs"):
        engine.complete("none", [1, 2], 1, prompt_logprobs=21)
    with pytest.raises(SpecError):
        engine.complete("no-such-method", [1, 2], 1)


# ------------------------------------------------------------------------------------------ prefix reuse
@pytest.mark.parametrize("spec", ["none", "ntk:factor=2", "pi:factor=2", "self-extend:window=16,group=4,dynamic=false",
                                  "logn:skip_layers=0", "longheads:chunk=16,chunks=4"])
def test_prefix_reuse_gives_the_same_tokens(spec):
    engine = Engine(sharp_llama())
    pc = PrefixCache(1 << 30, min_tokens=32)
    doc = _ids(180, 7)
    q1, q2 = _ids(12, 8), _ids(15, 9)
    sampling = Sampling(top_logprobs=2)
    first = engine.complete(spec, doc + q1, 10, stop_ids=set(), sampling=sampling, prefix_cache=pc, chunk_size=64)
    assert first.cached_tokens == 0 and pc.entries == 1 and pc.bytes_held > 0
    second = engine.complete(spec, doc + q2, 10, stop_ids=set(), sampling=sampling, prefix_cache=pc, chunk_size=64)
    plain = engine.complete(spec, doc + q2, 10, stop_ids=set(), sampling=sampling, chunk_size=64)
    assert second.cached_tokens == len(doc) and pc.hits == 1 and pc.hit_tokens == len(doc)
    assert second.token_ids == plain.token_ids
    for a, b in zip(second.steps, plain.steps):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [t for t, _ in a.top] == [t for t, _ in b.top]
    again = engine.complete(spec, doc + q2, 10, stop_ids=set(), sampling=sampling, prefix_cache=pc, chunk_size=64)
    # the two prompts were folded into one entry holding the shared document, which this one extends again
    assert again.cached_tokens == len(doc) and again.token_ids == plain.token_ids
    repeat = engine.complete(spec, doc + q2, 10, stop_ids=set(), sampling=sampling, prefix_cache=pc, chunk_size=64)
    assert repeat.cached_tokens == len(doc + q2) - 1 and repeat.token_ids == plain.token_ids  # one token prefilled
    seeded = Sampling(temperature=1.0, seed=4)
    a = engine.complete(spec, doc + q1, 10, stop_ids=set(), sampling=seeded, prefix_cache=pc, chunk_size=64)
    b = engine.complete(spec, doc + q1, 10, stop_ids=set(), sampling=seeded, chunk_size=64)
    assert a.cached_tokens > 0 and a.token_ids == b.token_ids


@pytest.mark.parametrize("arch, spec", [("tiny-gemma3", "none"), ("tiny-gemma3", "yarn:factor=2"),
                                        ("tiny-llama", "dynamic-ntk:factor=2"), ("tiny-llama", "dynamic-yarn"),
                                        ("tiny-llama", "snapkv:budget=48,window=8"), ("tiny-llama", "kv-int8"),
                                        ("tiny-llama", "streaming:sinks=4,window=24"),
                                        ("tiny-llama", "longheads:chunk=16,chunks=4,score=query")])
def test_no_reuse_where_the_cache_depends_on_the_request(arch, spec):
    engine = Engine(wrap(BUILDERS[arch](), arch))
    pc = PrefixCache(1 << 30, min_tokens=16)
    doc = _ids(100, 7)
    for q in range(3):
        c = engine.complete(spec, doc + _ids(10, q), 4, stop_ids=set(), prefix_cache=pc)
        assert c.cached_tokens == 0
    assert pc.entries == 0 and pc.queries == 0


def test_prompt_logprobs_never_reuse(llama):
    engine = Engine(llama)
    pc = PrefixCache(1 << 30, min_tokens=16)
    doc = _ids(100, 7)
    engine.complete("none", doc + [1], 2, prefix_cache=pc)
    assert pc.entries == 1
    c = engine.complete("none", doc + [2], 0, prompt_logprobs=1, prefix_cache=pc)
    assert c.cached_tokens == 0 and len(c.prompt_steps) == 101
    c = engine.complete("none", doc + [3], 2, prefix_cache=pc)
    assert c.cached_tokens == 100


def test_plans_share_no_entries(llama):
    engine = Engine(llama)
    pc = PrefixCache(1 << 30, min_tokens=16)
    doc = _ids(100, 7)
    engine.complete("none", doc + [1], 2, prefix_cache=pc)
    assert engine.complete("ntk:factor=2", doc + [2], 2, prefix_cache=pc).cached_tokens == 0
    assert engine.complete("ntk:factor=2", doc + [3], 2, prefix_cache=pc).cached_tokens == 100
    assert engine.complete("none", doc + [4], 2, prefix_cache=pc).cached_tokens == 100
    other = Engine(wrap(tiny_llama(seed=1), "tiny-llama"))  # another model object: its own entries
    assert other.complete("none", doc + [5], 2, prefix_cache=pc).cached_tokens == 0
