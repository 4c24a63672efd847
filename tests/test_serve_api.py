"""The OpenAI-compatible API of ``longreach serve``, driven by the official ``openai`` client against the
app served by uvicorn (a thread, 127.0.0.1, a free port) on a tiny random Llama (window 256, byte tokens).

What is checked: the wire shapes clients parse (models, chat, chat streaming, completions, echo +
logprobs, usage), that they carry the model's real numbers (streamed deltas join to the non-stream text,
echoed logprobs equal ``Engine.loglik``, a stop string cuts the text, a seed reproduces a sampled text),
the per-request method (``NAME@SPEC`` and ``"method"``), readers through chat, the OpenAI error object
for each refusal (bad spec, too long, malformed JSON, unknown model and route, n=2, a timeout), the
tokenizer endpoints lm-eval uses, and that the model is unchanged after all of it."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from conftest import serve_in_thread, tiny_llama, wrap

openai = pytest.importorskip("openai", reason="the openai client is not installed (pip install openai)")
pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'longreach[serve]')")

from longreach.engine import Engine  # noqa: E402
from longreach.serve import ServeConfig, create_app  # noqa: E402
from longreach.spec import Plan  # noqa: E402

NAME = "tiny-llama"
READER = "infiniretri:chunk=64,top_k=16"
MSG = [{"role": "user", "content": "The pass key is 4417. Remember it.\n\nWhat is the pass key?"}]


def checksum(model: Any) -> str:
    """Hash of every parameter and buffer (names, shapes, values)."""
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def served(app: Any):
    """Serve ``app`` on 127.0.0.1:<free port> in a thread (conftest.serve_in_thread); yield its root URL."""
    return serve_in_thread(app)


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, Any]]:
    lm = wrap(tiny_llama(), NAME)
    before = checksum(lm.model)
    app = create_app(lm, ServeConfig(port=0, default_max_tokens=16, max_queue=8))
    with served(app) as root:
        client = openai.OpenAI(base_url=f"{root}/v1", api_key="x", max_retries=0, timeout=60)
        yield {"lm": lm, "app": app, "root": root, "client": client, "checksum": before}


def raw(root: str, path: str, body: bytes | None = None, method: str | None = None) -> tuple[int, Any, Any]:
    """(status, JSON body, headers) of one HTTP request, without the openai client."""
    req = urllib.request.Request(root + path, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def error_of(exc: Any) -> dict[str, Any]:
    body = exc.body if isinstance(exc.body, dict) else {}
    return body.get("error", body)


# ------------------------------------------------------------------------------------------------ models
def test_models_list_the_served_model_and_every_method(server):
    models = server["client"].models.list().data
    assert [m.id for m in models] == [NAME]
    card = models[0].model_dump()
    assert card["owned_by"] == "longreach" and card["object"] == "model"
    assert card["max_model_len"] == 256 and card["method"] == "none"
    methods = {m["name"]: m for m in card["methods"]}
    assert methods["infiniretri"]["slot"] == "reader" and methods["yarn"]["slot"] == "rope"
    assert all(m["paper"] and m["summary"] for m in methods.values())
    one = server["client"].models.retrieve(NAME)
    assert one.id == NAME
    with pytest.raises(openai.NotFoundError):
        server["client"].models.retrieve("gpt-4")


# -------------------------------------------------------------------------------------------------- chat
def test_chat_and_its_stream_give_the_same_greedy_text(server):
    client = server["client"]
    r = client.chat.completions.create(model=NAME, messages=MSG, temperature=0, max_tokens=12)
    text = r.choices[0].message.content
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert isinstance(text, str) and r.choices[0].finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 20 and 1 <= u.completion_tokens <= 12
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details.cached_tokens == 0

    chunks = list(client.chat.completions.create(model=NAME, messages=MSG, temperature=0, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    joined = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert joined == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [r.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == u.completion_tokens
    assert chunks[-1].usage.prompt_tokens == u.prompt_tokens


def test_chat_logprobs_are_the_models(server):
    client, lm = server["client"], server["lm"]
    r = client.chat.completions.create(model=NAME, messages=MSG, temperature=0, max_tokens=4, logprobs=True,
                                       top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-6)
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token or len(entry.bytes) == 1
    assert lm.info.name == NAME


# ----------------------------------------------------------------------------------------------- completions
def test_completions_text_and_token_prompts_one_choice_each(server):
    client = server["client"]
    r = client.completions.create(model=NAME, prompt=["The cat", "A dog"], max_tokens=5, temperature=0)
    assert r.object == "text_completion"
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage.prompt_tokens == len("The cat") + len("A dog")  # byte tokens, no BOS added by this tokenizer
    single = client.completions.create(model=NAME, prompt="A dog", max_tokens=5, temperature=0)
    assert single.choices[0].text == r.choices[1].text
    ids = raw(server["root"], "/tokenize", json.dumps({"prompt": "A dog", "add_special_tokens": False}).encode())[1]["tokens"]
    by_ids = client.completions.create(model=NAME, prompt=ids, max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == single.choices[0].text


def test_echo_logprobs_equal_the_engines_loglik(server):
    client, lm = server["client"], server["lm"]
    ids = [71, 68, 75, 75, 78, 32, 86, 78, 81, 75, 67, 11, 40, 50]
    r = client.completions.create(model=NAME, prompt=ids, max_tokens=1, echo=True, logprobs=2, temperature=0,
                                  seed=1234)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(ids) + 1 == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # the first prompt token has no context
    nll = Engine.for_model(lm).loglik("none", ids)  # (n-1,) NLL of ids[1:]
    assert torch.allclose(torch.tensor(lp.token_logprobs[1:len(ids)], dtype=torch.float64), -nll, atol=1e-4)
    for i, top in enumerate(lp.top_logprobs[1:], start=1):
        assert max(top.values()) >= lp.token_logprobs[i] - 1e-6  # the top-1 is always listed (lm-eval: is_greedy)
    # the generated token is the greedy one: its logprob is the top
    assert lp.token_logprobs[-1] == pytest.approx(max(lp.top_logprobs[-1].values()), abs=1e-6)
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    assert r.choices[0].text.startswith(lm.tokenizer.decode(ids))
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 1


def test_stop_string_cuts_the_text(server):
    client = server["client"]
    full = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=16, temperature=0)
    text = full.choices[0].text
    assert len(text) >= 6, text
    stop = text[3:5]
    cut = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[:text.find(stop)]
    assert stop not in cut.choices[0].text
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=16, temperature=0,
                                         stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == cut.choices[0].text


def test_seed_reproduces_a_sampled_text(server):
    client = server["client"]

    def sample(seed: int) -> str:
        r = client.chat.completions.create(model=NAME, messages=MSG, temperature=1, max_tokens=10, seed=seed)
        return r.choices[0].message.content

    a, b, c = sample(7), sample(7), sample(8)
    assert a == b
    assert a != c  # near-uniform tiny model: 10 tokens out of ~260 drawn alike by chance is ~impossible


# -------------------------------------------------------------------------------------------------- methods
def test_method_by_model_name_or_body_reads_a_too_long_prompt(server):
    client = server["client"]
    long_prompt = "word " * 60  # 300 byte tokens > the window of 256
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=NAME, prompt=long_prompt, max_tokens=4, temperature=0)
    err = error_of(info.value)
    assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"
    assert "256" in err["message"] and "304" in err["message"] and "yarn:factor=2" in err["message"]

    by_name = client.completions.create(model=f"{NAME}@yarn:factor=2", prompt=long_prompt, max_tokens=4, temperature=0)
    assert by_name.model == f"{NAME}@{Plan.from_spec('yarn:factor=2').spec}"  # the method that ran, canonical
    assert by_name.usage.prompt_tokens == 300
    by_body = client.completions.create(model=NAME, prompt=long_prompt, max_tokens=4, temperature=0,
                                        extra_body={"method": "yarn:factor=2"})
    assert by_body.choices[0].text == by_name.choices[0].text
    same = client.completions.create(model=f"{NAME}@yarn:factor=2", prompt=long_prompt, max_tokens=4, temperature=0,
                                     extra_body={"method": "yarn:factor=2.0"})
    assert same.model == by_name.model  # the same plan written two ways is no conflict
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=f"{NAME}@yarn:factor=2", prompt="hi", max_tokens=2,
                                  extra_body={"method": "pi:factor=2"})
    assert error_of(info.value)["code"] == "invalid_method"
    # a method changes the output: yarn on a short prompt is not the plain model
    plain = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=6, temperature=0, logprobs=0)
    yarn = client.completions.create(model=f"{NAME}@yarn:factor=4", prompt="Once upon a time", max_tokens=6,
                                     temperature=0, logprobs=0)
    assert plain.choices[0].logprobs.token_logprobs != yarn.choices[0].logprobs.token_logprobs


def test_bad_spec_is_invalid_method_before_any_work(server):
    client = server["client"]
    for kwargs, param in (({"model": f"{NAME}@yarn:factor=x"}, "model"),
                          ({"model": f"{NAME}@no-such-method"}, "model"),
                          ({"model": NAME, "extra_body": {"method": "yarn:factr=2"}}, "method"),
                          ({"model": f"{NAME}@"}, "model")):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(messages=MSG, max_tokens=2, **kwargs)
        err = error_of(info.value)
        assert err["code"] == "invalid_method" and err["param"] == param, err
        assert "\n" not in err["message"] and "Traceback" not in err["message"]


def test_reader_method_answers_through_chat(server):
    client = server["client"]
    document = " ".join(f"Sentence number {i} is about topic {i % 7}." for i in range(30))  # > the window
    messages = [{"role": "user", "content": document}, {"role": "user", "content": "Which topic is sentence 12 about?"}]
    r = client.chat.completions.create(model=f"{NAME}@{READER}", messages=messages, max_tokens=6, temperature=0.7)
    assert r.model == f"{NAME}@{Plan.from_spec(READER).spec}"
    assert isinstance(r.choices[0].message.content, str)
    assert r.usage.prompt_tokens > 0 and 0 <= r.usage.completion_tokens <= 6
    streamed = list(client.chat.completions.create(model=f"{NAME}@{READER}", messages=messages, max_tokens=6,
                                                   stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == r.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=f"{NAME}@{READER}", messages=messages, max_tokens=6, logprobs=True)
    assert error_of(info.value)["param"] == "logprobs"


# --------------------------------------------------------------------------------------------------- errors
def test_errors_are_openai_error_objects(server):
    client, root = server["client"], server["root"]
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4", messages=MSG)
    err = error_of(info.value)
    assert err["code"] == "model_not_found" and NAME in err["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=NAME, messages=MSG, n=2)
    assert error_of(info.value)["param"] == "n"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=NAME, messages=MSG, temperature=3)
    assert error_of(info.value)["param"] == "temperature"

    status, body, _ = raw(root, "/v1/chat/completions", b'{"model": "tiny-llama", "messages": [')
    assert status == 400 and body["error"]["code"] == "invalid_json" and body["error"]["type"] == "invalid_request_error"
    status, body, _ = raw(root, "/v1/chat/completions", b'{"model": "tiny-llama"}')
    assert status == 400 and body["error"]["param"] == "messages"  # not FastAPI's 422
    status, body, _ = raw(root, "/v1/chat/completions",
                          json.dumps({"model": NAME, "messages": [{"role": "user", "content": 5}]}).encode())
    assert status == 400 and body["error"]["param"].startswith("messages[0].content")
    status, body, _ = raw(root, "/v1/nothing")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body, headers = raw(root, "/v1/chat/completions", method="GET")
    assert status == 405 and set(body["error"]) == {"message", "type", "param", "code"}
    status, body, _ = raw(root, "/health")
    assert status == 200 and body == {"status": "ok"}


def test_an_internal_error_is_a_fixed_500_with_no_details(server, monkeypatch, caplog):
    client, engine = server["client"], server["app"].state.engine

    def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("secret detail /home/user/model.py line 3")

    monkeypatch.setattr(engine, "complete", broken)
    with caplog.at_level("ERROR", logger="longreach.serve"):
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model=NAME, messages=MSG, max_tokens=2)
        err = error_of(info.value)
        assert err["code"] == "internal_error" and "secret" not in json.dumps(err)
        with pytest.raises(openai.APIError) as info:
            for _ in client.chat.completions.create(model=NAME, messages=MSG, max_tokens=2, stream=True):
                pass
        assert "secret" not in str(info.value) and "server's log" in str(info.value)
    assert "secret detail" in caplog.text  # the traceback is in the server's log


def test_request_leaves_active_only_after_its_slot_is_free():
    """The slot frees before the request leaves ``active``: whoever sees no active request (shutdown, the
    idle memory release, /metrics) never sees a slot still held by a finished one."""
    lm = wrap(tiny_llama(), NAME)
    app = create_app(lm, ServeConfig(port=0, max_running=1))
    admission = app.state.admission
    seen: list[int] = []

    class Watched(set):
        def discard(self, token: Any) -> None:
            seen.append(admission.running)
            super().discard(token)

    app.state.service.active = app.state.active = Watched()
    with served(app) as root:
        client = openai.OpenAI(base_url=f"{root}/v1", api_key="x", max_retries=0)
        client.completions.create(model=NAME, prompt="x", max_tokens=2, temperature=0)
        for _ in client.completions.create(model=NAME, prompt="x", max_tokens=2, temperature=0, stream=True):
            pass
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert seen == [0, 0]


def test_timeout_is_504_without_retry():
    lm = wrap(tiny_llama(), NAME)
    app = create_app(lm, ServeConfig(port=0, request_timeout=0.02))
    with served(app) as root:
        payload = {"model": NAME, "prompt": "x", "max_tokens": 250, "temperature": 0}
        status, body, headers = raw(root, "/v1/completions", json.dumps(payload).encode())
        assert status == 504 and body["error"]["code"] == "timeout"
        assert headers["x-should-retry"] == "false"
        client = openai.OpenAI(base_url=f"{root}/v1", api_key="x", max_retries=0)
        stream = client.completions.create(model=NAME, prompt="x", max_tokens=250, temperature=0, stream=True)
        with pytest.raises(openai.APIError, match="timeout|timed out"):
            for _ in stream:
                pass
        deadline = time.monotonic() + 10
        # cancelled work leaves the model; the slot is released by a task the event loop runs just after
        while (app.state.active or app.state.admission.running) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not app.state.active and app.state.admission.running == 0


def test_client_disconnect_cancels_generation(monkeypatch):
    """A client that goes away (mid-stream, or while a non-stream request runs) stops the model's work at
    its next step: the engine's run ends with Cancelled("client disconnected") long before max_tokens."""
    from longreach.sampling import Cancelled

    lm = wrap(tiny_llama(), NAME)
    app = create_app(lm, ServeConfig(port=0))
    engine = app.state.engine
    complete = engine.complete
    outcomes: list[Any] = []
    steps: list[int] = []

    def slow_complete(*args: Any, **kw: Any) -> Any:  # 10 ms a token: 250 tokens would take 2.5 s
        on_step = kw["on_step"]

        def slow(step: Any) -> Any:
            time.sleep(0.01)
            steps.append(step.token_id)
            return on_step(step)

        try:
            outcomes.append(complete(*args, **{**kw, "on_step": slow}))
        except Cancelled as exc:
            outcomes.append(exc)
            raise
        return outcomes[-1]

    monkeypatch.setattr(engine, "complete", slow_complete)
    with served(app) as root:
        client = openai.OpenAI(base_url=f"{root}/v1", api_key="x", max_retries=0)
        stream = client.completions.create(model=NAME, prompt="x", max_tokens=250, temperature=0, stream=True)
        next(iter(stream))
        stream.close()
        deadline = time.monotonic() + 10
        while not outcomes and time.monotonic() < deadline:
            time.sleep(0.02)
        assert isinstance(outcomes[0], Cancelled) and str(outcomes[0]) == "client disconnected"
        assert len(steps) < 100

        steps.clear()
        payload = json.dumps({"model": NAME, "prompt": "x", "max_tokens": 250, "temperature": 0}).encode()
        req = urllib.request.Request(root + "/v1/completions", data=payload, headers={"Content-Type": "application/json"})
        with pytest.raises(OSError):  # the client gives up after 0.3 s (socket timeout) and closes
            urllib.request.urlopen(req, timeout=0.3)
        while len(outcomes) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert isinstance(outcomes[1], Cancelled) and str(outcomes[1]) == "client disconnected"
        assert len(steps) < 100
        while (app.state.active or app.state.admission.running) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not app.state.active and app.state.admission.running == 0


def test_document_kv_reuse_reports_cached_tokens_and_keeps_the_answer():
    lm = wrap(tiny_llama(), NAME)
    app = create_app(lm, ServeConfig(port=0, kv_reuse_min_tokens=16))
    doc = "The quick brown fox jumps over the lazy dog. " * 4
    with served(app) as root:
        client = openai.OpenAI(base_url=f"{root}/v1", api_key="x", max_retries=0)

        def ask(question: str) -> Any:
            return client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": f"{doc}\n\n{question}"}],
                                                  max_tokens=6, temperature=0)

        first, other, again = ask("Who jumps?"), ask("Who is lazy?"), ask("Who jumps?")
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert other.usage.prompt_tokens_details.cached_tokens >= len(doc) - 4  # the shared document (byte tokens)
    # the two prompts were folded into one entry holding their shared prefix (the document, kept once)
    assert again.usage.prompt_tokens_details.cached_tokens == other.usage.prompt_tokens_details.cached_tokens
    assert again.choices[0].message.content == first.choices[0].message.content
    assert app.state.prefix_cache.hits == 2


# ------------------------------------------------------------------------------------------------ tokenizer
def test_tokenize_detokenize_round_trip(server):
    root = server["root"]
    status, info, _ = raw(root, "/tokenizer_info")
    assert status == 200 and info["eos_token"] == "</s>"
    text = "Hello, wörld!"
    status, body, _ = raw(root, "/tokenize", json.dumps({"prompt": text, "add_special_tokens": False}).encode())
    assert status == 200 and body["count"] == len(text.encode()) == len(body["tokens"])
    status, back, _ = raw(root, "/detokenize", json.dumps({"tokens": body["tokens"]}).encode())
    assert status == 200 and back["prompt"] == text
    status, eos, _ = raw(root, "/tokenize", json.dumps({"prompt": info["eos_token"], "add_special_tokens": False}).encode())
    assert eos["tokens"] == [server["lm"].tokenizer.eos_token_id]  # lm-eval's RemoteTokenizer.eos_token_id
    status, bad, _ = raw(root, "/detokenize", json.dumps({"tokens": [1, 10**6]}).encode())
    assert status == 400 and bad["error"]["param"] == "tokens"


def test_metrics_count_the_tokens(server):
    status_text = urllib.request.urlopen(server["root"] + "/metrics", timeout=30).read().decode()
    line = next(x for x in status_text.splitlines() if x.startswith("longreach_completion_tokens_total"))
    assert float(line.split()[-1]) > 0


# ------------------------------------------------------------------------------------------------ formatting
def test_text_stream_holds_a_possible_stop_and_cuts_before_it():
    from longreach.serve.formatting import TextStream

    tok = wrap(tiny_llama(), NAME).tokenizer
    ids = tok("Hello wörld END more", add_special_tokens=False).input_ids
    ts = TextStream(tok, ["END"])
    sent = []
    for i in ids:
        stopped = ts.add(i)
        sent.append(ts.take())
        if stopped:
            break
    assert ts.stopped and ts.text == "Hello wörld "
    assert "".join(sent) + ts.take(final=True) == "Hello wörld "
    assert "\ufffd" not in "".join(sent)  # the two bytes of ö are sent together
    assert all("E" not in piece for piece in sent)  # "E", "EN" were held back as a possible start of "END"
    plain = TextStream(tok)
    for i in tok("ab", add_special_tokens=False).input_ids:
        plain.add(i)
    plain.finish()
    assert plain.text == "ab" and not plain.stopped


def test_chat_prompt_uses_the_template_else_a_transcript():
    from longreach.serve.formatting import chat_prompt, reader_input
    from longreach.serve.schemas import ChatMessage

    tok = wrap(tiny_llama(), NAME).tokenizer
    msgs = [ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content=[{"type": "text", "text": "Doc."}, {"type": "text", "text": "Q?"}])]
    assert chat_prompt(tok, msgs) == "System: Be brief.\nUser: Doc.\nQ?\nAssistant:"
    tok.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert chat_prompt(tok, msgs) == "<system>Be brief.<user>Doc.\nQ?<assistant>"
    assert reader_input([ChatMessage(role="user", content="A long text.\n\nMore text.\n\nThe question?")]) == \
        ("A long text.\n\nMore text.", "The question?")
    assert reader_input(msgs) == ("Be brief.", "Doc.\nQ?")


# ------------------------------------------------------------------------------------------------ last
def test_model_is_unchanged_after_every_request(server):
    assert checksum(server["lm"].model) == server["checksum"]
    assert not server["app"].state.active
