"""The Engine: nothing outlives a request, the per-model lock, KV byte counts, devices.

After many requests alternating every method family the model must be exactly a freshly built one
(same seed): buffers, hooks, module attributes, attention implementation, logits; transformers'
attention registries hold one entry per method class. Threads sharing a model give the sequential
answers. The KV estimate of a plain cache equals the bytes a real ``DynamicCache`` holds.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import tiny_gemma3, tiny_llama, wrap
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import AttentionMaskInterface

from longreach.engine import Engine, ModelLock, SessionError
from longreach.errors import SpecError
from longreach.memory import cache_bytes, kv_cache_bytes_full
from longreach.methods.attention import base as attention_base
from longreach.readers import Request
from longreach.spec import Plan

BUILDERS = {"tiny-llama": tiny_llama, "tiny-gemma3": tiny_gemma3}

#: every family: rope (static, dynamic), attention (self-extend, logn with and without a raised base,
#: streaming, longheads in both scorings), cache (query hooks, rotation hooks, nuq calibration, plain),
#: the infiniretri reader alone and composed
SPECS = [
    "none",
    "yarn:factor=2",
    "dynamic-ntk:factor=2",
    "self-extend:window=16,group=4,dynamic=false",
    "logn:skip_layers=0",
    "logn:base=1e6",
    "streaming:sinks=4,window=24",
    "longheads:chunk=16,chunks=4,score=query",
    "snapkv:budget=48,window=8",
    "h2o:budget=48,window=8,question_aware=true",
    "kvquant:bits=4,group=16,residual=16",
    "kvquant:bits=4,group=16,residual=16,datatype=nuq",
    "kv-int8:group=16,residual=16",
    "infiniretri:chunk=32,top_k=16",
    "yarn:factor=2+snapkv:budget=48,window=8+infiniretri:chunk=32,top_k=16",
    "self-extend:window=16,group=4,dynamic=false+kvquant:bits=4,group=16,residual=16",
]
DOC = "The lamp is blue. The door is red. Ants walk in a line. " * 2  # ~110 byte tokens
HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks", "_forward_pre_hooks_with_kwargs",
              "_forward_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


def _ids(n, seed=0):
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _state(model):
    """Everything a request could leave behind on a model, comparable with ==."""
    modules = {}
    for name, m in model.named_modules():
        modules[name] = (type(m).__name__, sorted(vars(m)), tuple(len(getattr(m, h)) for h in HOOK_DICTS))
    cfg = model.config
    return modules, sorted(vars(cfg)), cfg._attn_implementation


def _registries():
    return len(AttentionInterface._global_mapping), len(AttentionMaskInterface._global_mapping)


# ---------------------------------------------------------------------------- nothing outlives a request
@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_many_requests_leave_the_model_exactly_as_loaded(arch):
    lm = wrap(BUILDERS[arch](), arch)
    fresh = BUILDERS[arch]()  # same seed: the model as loaded
    fresh.requires_grad_(False)
    engine = Engine(lm)
    assert _state(lm.model) == _state(fresh)
    sizes = None
    requests = 0
    for round_ in range(2):
        for spec in SPECS + SPECS[::-1]:
            result = engine.run(spec, Request(DOC, "What colour is the lamp?", max_new_tokens=3, chunk_size=40))
            assert result.input_tokens > 0 and result.kv_cache_bytes > 0
            requests += 1
            if round_ == 0 and spec == SPECS[0] and requests > 1:  # every class has run once
                sizes = _registries()
            assert _state(lm.model) == _state(fresh), spec  # after every single request
    assert requests >= 40
    assert sizes is not None and _registries() == sizes  # registered once per method class, never again
    assert not any(m in attention_base._ACTIVE for m in lm.model.modules())  # no closure kept
    assert not attention_base._MASKS
    fresh_buffers = dict(fresh.named_buffers())
    for name, buf in lm.model.named_buffers():
        assert buf.dtype == fresh_buffers[name].dtype and torch.equal(buf, fresh_buffers[name]), name
    rot, fresh_rot = lm.model.model.rotary_emb, fresh.model.rotary_emb
    for name, value in vars(fresh_rot).items():  # attention scalings and other plain attributes
        if isinstance(value, (int, float, str)):
            assert getattr(rot, name) == value, name
    ids = torch.tensor([_ids(120, seed=3)])
    with torch.inference_mode():
        assert torch.equal(lm.model(ids).logits, fresh(ids).logits)


def test_one_attention_function_per_method_class_and_no_growth(llama):
    engine = Engine(llama)
    for spec in ("self-extend:window=16,group=4,dynamic=false", "logn:skip_layers=0", "streaming:sinks=4,window=24"):
        engine.generate(spec, _ids(30), 2)
    before = _registries()
    for _ in range(3):
        for spec in ("self-extend:window=16,group=4,dynamic=false", "logn:skip_layers=0", "streaming:sinks=4,window=24"):
            engine.generate(spec, _ids(30), 2)
    assert _registries() == before
    assert "longreach-self-extend" in AttentionInterface._global_mapping
    assert "longreach-logn" in AttentionMaskInterface._global_mapping  # delegates: needs the mask too
    assert not any(k.startswith("longreach-") and k[-1].isdigit() for k in AttentionInterface._global_mapping)


def test_a_closure_is_only_reachable_during_its_session(llama):
    engine = Engine(llama)
    attn = llama.model.model.layers[0].self_attn
    with engine.session("self-extend:window=16,group=4,dynamic=false"):
        name, fn = attention_base._ACTIVE[attn]
        assert name == "longreach-self-extend" and llama.model.config._attn_implementation == name
    assert attn not in attention_base._ACTIVE and llama.model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="Engine"):  # the registered function of another model's request
        AttentionInterface._global_mapping["longreach-self-extend"](attn, None, None, None, None)


def test_request_length_is_not_kept_on_the_method(llama):
    plan = Plan.from_spec("dynamic-ntk:factor=4")
    method = plan.methods[0]
    before = dict(vars(method))
    engine = Engine(llama)
    with engine.session(plan, 900):
        long_freq = llama.model.model.rotary_emb.inv_freq.clone()
    with engine.session(plan, 100):  # within the window: the original frequencies
        short_freq = llama.model.model.rotary_emb.inv_freq.clone()
    assert vars(method) == before
    assert not torch.equal(long_freq, short_freq)
    torch.testing.assert_close(short_freq, llama.model.model.rotary_emb.inv_freq)


def test_failed_install_and_errors_inside_a_session_undo_everything(llama):
    fresh = tiny_llama()
    engine = Engine(llama)
    with pytest.raises(SpecError, match="window"):  # yarn installs, then self-extend's check fails
        with engine.session("yarn:factor=2+self-extend:window=300"):
            pass
    with pytest.raises(ZeroDivisionError):
        with engine.session("yarn:factor=2+snapkv:budget=8,window=4"):
            assert len(llama.model.model.layers[0].self_attn._forward_pre_hooks) == 1
            raise ZeroDivisionError("a request that fails inside the session")
    assert _state(llama.model) == _state(fresh)
    assert torch.equal(llama.model.model.rotary_emb.inv_freq, fresh.model.rotary_emb.inv_freq)
    engine.generate("none", _ids(10), 1)  # the lock was released


def test_hooks_exist_only_for_the_request(gemma):
    engine = Engine(gemma)
    attn = [m for m in gemma.model.modules() if hasattr(m, "q_proj")]
    for spec, per_module in (("snapkv:budget=8,window=4", 1), ("kvquant:bits=4,group=16,residual=16", 1),
                             ("knorm:budget=8,window=4", 0), ("kvquant:bits=4,pre_rope=false", 0)):
        with engine.session(spec):
            assert all(len(m._forward_pre_hooks) == per_module for m in attn), spec
        assert all(len(m._forward_pre_hooks) == 0 for m in attn), spec


def test_nuq_codebooks_are_cached_per_model_not_on_the_method(llama):
    from longreach.kv import calibrate

    plan = Plan.from_spec("kvquant:bits=4,group=16,residual=16,datatype=nuq")
    before = dict(vars(plan.methods[0]))
    Engine(llama).generate(plan, _ids(40), 2)
    assert vars(plan.methods[0]) == before
    assert llama.model in calibrate._STORE


def test_sessions_do_not_nest(llama):
    engine = Engine(llama)
    with engine.session("none"):
        with pytest.raises(SessionError, match="nest"):
            with engine.session("none"):
                pass
    engine.generate("none", _ids(5), 1)


def test_engine_for_model_is_one_per_model(llama, gemma):
    assert Engine.for_model(llama) is Engine.for_model(llama)
    assert Engine.for_model(llama) is not Engine.for_model(gemma)
    assert Engine(llama).lock is Engine.for_model(llama).lock  # one lock per model object


def test_a_dropped_model_is_freed():
    """Nothing the engine keeps per model (engine, lock, closures, codebooks) holds the model alive."""
    import gc
    import weakref

    lm = wrap(tiny_llama(), "tiny-llama")
    engine = Engine.for_model(lm)
    for spec in ("self-extend:window=16,group=4,dynamic=false", "snapkv:budget=8,window=4",
                 "kvquant:bits=4,group=16,residual=16,datatype=nuq", "infiniretri:chunk=32,top_k=8"):
        engine.run(spec, Request(DOC, "What colour is the lamp?", max_new_tokens=2, chunk_size=40))
    alive = weakref.ref(lm.model)
    del lm, engine
    gc.collect()
    assert alive() is None


# ------------------------------------------------------------------------------------ concurrency
def test_which_plans_take_the_model_exclusively(llama):
    engine = Engine(llama)
    exclusive = {"none": False, "knorm": False, "kv-int4": False, "kv-cluster": False,
                 "kvquant:pre_rope=false": False, "kvquant": True, "snapkv": True, "h2o": True,
                 "yarn": True, "dynamic-ntk": True, "self-extend": True, "streaming": True,
                 "infiniretri": True, "knorm+infiniretri": True}
    for spec, want in exclusive.items():
        assert engine.changes_model(Plan.from_spec(spec)) is want, spec


def test_model_lock_shares_plain_requests_and_serialises_changes(caplog):
    lock = ModelLock()
    order: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def shared_holder():
        with lock.hold(False, "none on m"):
            order.append("shared-1 in")
            inside.set()
            release.wait(5)
            order.append("shared-1 out")

    def second_shared():
        with lock.hold(False, "none on m"):
            order.append("shared-2 in")

    def exclusive():
        with lock.hold(True, "yarn on m"):
            order.append("exclusive in")

    t1 = threading.Thread(target=shared_holder)
    t1.start()
    inside.wait(5)
    t2 = threading.Thread(target=second_shared)
    t2.start()
    t2.join(5)
    assert not t2.is_alive() and order == ["shared-1 in", "shared-2 in"]  # shared overlap
    with caplog.at_level(logging.INFO, logger="longreach"):
        t3 = threading.Thread(target=exclusive)
        t3.start()
        time.sleep(0.2)
        assert "exclusive in" not in order  # waits for the shared holder
        release.set()
        t3.join(5)
        t1.join(5)
    assert order == ["shared-1 in", "shared-2 in", "shared-1 out", "exclusive in"]
    assert any(r.getMessage() == "waiting for yarn on m" for r in caplog.records)


def test_threads_on_one_model_give_the_sequential_answers(gemma):
    engine = Engine(gemma)
    ids = _ids(150, seed=7)
    jobs = [("loglik", "none"), ("loglik", "yarn:factor=2"), ("loglik", "self-extend:window=16,group=4,dynamic=false"),
            ("loglik", "snapkv:budget=48,window=8"), ("run", "kvquant:bits=4,group=16,residual=16"),
            ("run", "none"), ("loglik", "knorm:budget=48,window=8"), ("run", "streaming:sinks=4,window=24")]

    def do(job):
        kind, spec = job
        if kind == "loglik":
            return engine.loglik(spec, ids, chunk=40)
        return engine.run(spec, Request(DOC, "What colour is the lamp?", max_new_tokens=4, chunk_size=40)).output_ids

    sequential = [do(j) for j in jobs]
    for _ in range(2):
        with ThreadPoolExecutor(6) as pool:
            threaded = list(pool.map(do, jobs))
        for job, a, b in zip(jobs, sequential, threaded):
            assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b), job
    assert not torch.equal(sequential[0], sequential[1])  # the plans really differ


# ----------------------------------------------------------------------------------------- KV bytes
@pytest.mark.parametrize("arch", sorted(BUILDERS))
@pytest.mark.parametrize("n", [1, 14, 15, 16, 17, 100])
def test_plain_kv_estimate_equals_a_real_dynamic_cache(arch, n):
    lm = wrap(BUILDERS[arch](), arch)
    info = lm.info
    with Engine(lm).session("none") as s:
        cache = s.make_cache()
        assert type(cache) is DynamicCache
        s.prefill(_ids(n), cache, 32)
    real = sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
               for layer in cache.layers)  # independent count
    assert real == cache_bytes(cache) == kv_cache_bytes_full(info, n) == Plan.from_spec("none").kv_cache_bytes(info, n)
    assert info.kv_bytes_per_token == kv_cache_bytes_full(info, 1)
    if info.sliding_window and n >= info.sliding_window:  # sliding layers are capped at window - 1
        assert real < info.kv_bytes_per_token * n


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_cache_method_estimates_agree_with_their_caches(arch):
    lm = wrap(BUILDERS[arch](), arch)
    engine = Engine(lm)
    exact = ["streaming:sinks=4,window=24", "knorm:budget=40,window=8,question_aware=true",
             "snapkv:budget=40,window=8,question_aware=true", "h2o:ratio=0.5,window=8,question_aware=true",
             "kv-int4:group=16,residual=16", "kv-int8", "kvquant:bits=4,group=16,residual=16,outliers=0",
             "kvquant:bits=2,outliers=0"]
    close = ["kvquant:bits=4,group=16,residual=16", "kvquant:bits=4,group=16,residual=16,datatype=nuq",
             "kv-cluster"]
    for spec in exact + close:
        for n in (15, 100, 200):
            with engine.session(spec, n) as s:
                cache = s.make_cache()
                s.prefill(_ids(n, seed=n), cache, 64)
            real, est = cache_bytes(cache), Plan.from_spec(spec).kv_cache_bytes(lm.info, n)
            if spec in exact:
                assert est == real, (spec, n, est, real)
            else:  # outliers are rounded per flushed block; kv-cluster's floor is an upper bound
                assert real * 0.99 <= est <= real * 1.1, (spec, n, est, real)


# ------------------------------------------------------------------------------------------ device
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_every_family_runs_on_the_model_device(arch):
    lm = wrap(BUILDERS[arch]().to("cuda"), arch)
    engine = Engine(lm)
    assert engine.device.type == "cuda"
    cpu = Engine(wrap(BUILDERS[arch](), arch))
    for spec in SPECS:
        result = engine.run(spec, Request(DOC, "What colour is the lamp?", max_new_tokens=3, chunk_size=40))
        assert result.input_tokens > 0, spec
        plan = Plan.from_spec(spec)
        if plan.get("reader") is None and plan.get("cache") is None:  # the same maths on both devices
            nll, ref = engine.loglik(spec, _ids(120), chunk=40), cpu.loglik(spec, _ids(120), chunk=40)
            assert nll.device.type == "cpu"
            torch.testing.assert_close(nll, ref, rtol=1e-3, atol=1e-3)
    assert _state(lm.model)[1:] == _state(cpu.model)[1:]
