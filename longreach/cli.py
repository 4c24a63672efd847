"""Command line: ``longreach ask | models | info | methods``.

User errors (:class:`~longreach.errors.LongreachError`) print one line and exit non-zero; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from . import __version__
from .errors import LongreachError
from .models import DEFAULT_MODEL, KNOWN_MODELS
from .prompt import format_arg
from .units import MAX_LENGTH, check_count, format_bytes, parse_bytes


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other error: the problem and where to look."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"known model name ({', '.join(KNOWN_MODELS)}), a local model folder or a .gguf file "
                        f"(default: {DEFAULT_MODEL})")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights/compute dtype (default: auto = the fastest on the device: bfloat16 or float32 "
                        "on a CPU, bfloat16 (float16 without bf16) on a GPU; rotary angles stay float32)")
    add_device_arg(p)


def add_device_arg(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """``--device``: checked by :func:`check_device` before anything loads (one-line error)."""
    p.add_argument("--device", default=default, metavar="{auto,cpu,cuda,mps}",
                   help="where the model runs: auto (default) = CUDA when present, else the CPU; cuda:N for "
                        "one GPU of several; mps only when asked for")


def check_device(device: str | None) -> None:
    """Validate ``--device`` now, before any file or model is read: an unknown or absent device is one line."""
    from .models import resolve_device

    resolve_device(device)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="longreach",
        description="Make a language model read far beyond its trained window, and measure how far it reads.",
    )
    parser.add_argument("--version", action="version", version=f"longreach {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (to stderr)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("ask", help="answer a question about long text files or folders")
    p.add_argument("files", nargs="*", default=["-"], metavar="FILE", help="UTF-8 text files or folders (read as one corpus), - for stdin")
    p.add_argument("-q", "--question", required=True, help="the question to answer")
    _add_model_args(p)
    p.add_argument("--method", default="none",
                   help="method spec, e.g. yarn:factor=4 or yarn:factor=4+kv-int4 (see `longreach methods`)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit (default 64)")
    p.add_argument("--answer-prefix", default="", help="text that starts the answer, e.g. 'The pass key is'")
    p.add_argument("--prompt", default="auto", type=format_arg, metavar="FORMAT",
                   help="prompt format BASE[+MOD...]: BASE auto (the format measured best for the model), chat "
                        "(its chat template) or plain ('Question: ... Answer:' completion); MOD qfirst, both "
                        "(question before / before and after the document), instruct, prefix (an answer "
                        "start derived from the question). See docs/prompts.md")
    p.add_argument("--chunk-size", type=int, default=2048, help="prefill chunk in tokens (default 2048)")
    p.add_argument("--memory-limit", default=None,
                   help="refuse requests estimated above this, e.g. 4GiB (default: memory available)")
    p.add_argument("--json", action="store_true", help="print one JSON object with the answer and its costs")
    p.add_argument("--show-evidence", action="store_true",
                   help="also print the passages a retrieval reader kept (e.g. --method infiniretri)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    sub.add_parser("models", help="list the known models")

    p = sub.add_parser("info", help="print the configuration of a model that matters for long context")
    _add_model_args(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("methods", help="list the registered methods with their parameters and papers")
    p.add_argument("--json", action="store_true")
    p.add_argument("--markdown", action="store_true", help="a Markdown table (the one in README.md)")

    p = sub.add_parser("serve", help="serve a model (with any method) over an OpenAI-compatible HTTP API",
                       description="An OpenAI-compatible server: /v1/models, /v1/chat/completions, /v1/completions, "
                                   "/health, /metrics. A request picks a method with model='NAME@SPEC' or the body "
                                   "field 'method'; --method is the default. Stops cleanly on SIGTERM / Ctrl-C.")
    _add_model_args(p)
    p.add_argument("--method", default="none",
                   help="default method spec for requests that name none, e.g. yarn:factor=4 (default none)")
    p.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="the model id clients send and /v1/models lists (default: the model's name)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; any other needs --api-key)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 = any free port)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="clients must send 'Authorization: Bearer KEY' (default: $LONGREACH_API_KEY; required "
                        "with a --host other machines can reach)")
    p.add_argument("--max-queue", type=int, default=16,
                   help="requests waiting beyond the running ones; more are refused with 429 (default 16)")
    p.add_argument("--max-running", type=int, default=1, help="requests on the model at once (default 1)")
    p.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds a request may take, queue wait included; then 504 (default 600)")
    p.add_argument("--max-body-bytes", default="64MiB", help="request body limit, e.g. 64MiB; larger: 413")
    p.add_argument("--kv-reuse-bytes", default="2GiB",
                   help="budget of the document KV reuse cache (a 2nd question on the same document skips its "
                        "prefill), e.g. 2GiB; 0 = off (default 2GiB)")
    p.add_argument("--memory-limit", default=None,
                   help="refuse requests estimated above this, e.g. 4GiB (default: memory available)")
    p.add_argument("--chunk-size", type=int, default=2048, help="prefill chunk in tokens (default 2048)")
    p.add_argument("--drain-seconds", type=float, default=30.0,
                   help="on SIGTERM, how long requests in flight get to finish (default 30)")

    p = sub.add_parser("export", help="print the command line that serves a position method on vLLM",
                       description="Print `vllm serve MODEL --hf-overrides '{\"rope_parameters\": ...}' "
                                   "--max-model-len N` for a rope method vLLM can express (pi, ntk, critical-ntk, "
                                   "dynamic-ntk, yarn), or one line saying why it cannot (attention, cache and "
                                   "reader methods: serve those with `longreach serve`). Reads the model's "
                                   "config only.")
    p.add_argument("target", choices=["vllm"], help="the serving engine to export to")
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"known model name ({', '.join(KNOWN_MODELS)}), a local model folder or a .gguf file "
                        f"(default: {DEFAULT_MODEL})")
    p.add_argument("--method", default="none", help="method spec, e.g. yarn:factor=4 (default none)")
    p.add_argument("--max-model-len", type=int, default=None, metavar="N",
                   help="context length vLLM allows (default: what the method reads, its reach)")
    p.add_argument("--json", action="store_true", help="print one JSON object (argv, overrides, warnings)")

    from .bench.cli import add_parsers as add_bench_parsers  # tasks, bench, report

    add_bench_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="longreach: %(message)s")
    if not args.verbose:
        _quiet_libraries()
    if args.command is None:
        parser.print_help()
        print("longreach: error: no command given; pick one of the commands above", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args)
    except LongreachError as exc:
        print(f"longreach: error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, always
        return exc.exit_code
    except KeyboardInterrupt:
        print("longreach: interrupted", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def cmd_ask(args: argparse.Namespace) -> int:
    from .ask import ask

    # every option is checked here, before any file is read or the model loads
    check_count(args.max_new_tokens, "--max-new-tokens", 1, MAX_LENGTH)
    check_count(args.chunk_size, "--chunk-size", 1, MAX_LENGTH)
    if args.memory_limit is not None:
        try:
            parse_bytes(args.memory_limit)
        except LongreachError as exc:
            raise type(exc)(f"--memory-limit: {exc}") from None
    check_device(args.device)
    # ask() checks the question, the spec and the files before it loads the model.
    result = ask(args.files, args.question, model=args.model, method=args.method,
                 max_new_tokens=args.max_new_tokens, answer_prefix=args.answer_prefix, prompt=args.prompt,
                 chunk_size=args.chunk_size, dtype=args.dtype, device=args.device, memory_limit=args.memory_limit,
                 progress=not args.no_progress and sys.stderr.isatty())
    if args.json:
        print(json.dumps(result.as_dict(), ensure_ascii=False))
    else:
        print(result.full_answer)  # the answer prefix (given or derived) + the answer: one sentence
        if args.show_evidence:
            route = result.extra.get("route")
            if route:
                print(f"\n--- route: {route['decision']} with {route['method']}: {route['reason']} ---")
            if "hallucinated" in result.extra:  # alr2: quotes checked against the text
                x = result.extra
                print(f"\n--- alr2: {x.get('verified', 0)} of {x.get('quotes', 0)} quotes verified, "
                      f"{x['hallucinated']} hallucinated ---")
                for quote in x.get("hallucinated_quotes", []):
                    print(f"x {quote}")
            if result.evidence:
                print(f"\n--- evidence ({len(result.evidence)} passages kept by {result.method}) ---")
                for passage in result.evidence:
                    print(f"* {passage}")
            else:
                print(f"\n--- no evidence: {result.method} reads the whole document (no retrieval reader) ---")
        logging.getLogger("longreach").info(
            "%s tokens, prefill %.1fs (%.0f tok/s), decode %.1fs, peak %s, KV cache %s",
            result.input_tokens, result.prefill_seconds, result.prefill_tokens_per_second,
            result.decode_seconds, format_bytes(result.peak_memory_bytes), format_bytes(result.kv_cache_bytes))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    print(f"{'name':<14} {'window':>7} {'arch':<12} {'size':>5}  description")
    for m in KNOWN_MODELS.values():
        print(f"{m.name:<14} {m.window:>7} {m.arch:<12} {m.size:>5}  {m.description}  [package {m.package}]")
    print("\nAlso accepted by --model: a local Hugging Face model folder or a local .gguf file.")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .models import load_model

    check_device(args.device)
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    info = lm.info.as_dict()
    info["kv_bytes_per_token"] = lm.info.kv_bytes_per_token
    info["dtype_choice"] = lm.dtype_reason
    info["device"] = str(lm.device)
    info["device_choice"] = lm.device_reason
    if args.json:
        print(json.dumps(info))
        return 0
    types = sorted(set(lm.info.layer_types))
    layout = ", ".join(f"{lm.info.layer_types.count(t)} {t}" for t in types)
    print(f"model         {lm.info.name} ({lm.info.arch}, {lm.info.parameters / 1e6:.1f}M parameters)")
    print(f"window        {lm.info.window:,} tokens")
    for t in types:
        print(f"rope[{t}]  {lm.info.rope.get(t)}")
    print(f"layers        {lm.info.layers} ({layout})")
    if lm.info.sliding_window:
        print(f"sliding       {lm.info.sliding_window} tokens")
    print(f"heads         {lm.info.heads} query / {lm.info.kv_heads} key-value, head dim {lm.info.head_dim}")
    print(f"hidden        {lm.info.hidden}, vocab {lm.info.vocab:,}")
    print(f"device        {lm.device}" + (f" ({lm.device_reason})" if lm.device_reason else ""))
    print(f"dtype         {lm.info.dtype} ({lm.dtype_reason})")
    print(f"KV cache      {format_bytes(lm.info.kv_bytes_per_token)} per token "
          f"({format_bytes(lm.info.kv_bytes_per_token * lm.info.window)} at the full window)")
    print(f"chat template {'yes' if lm.info.chat_template else 'no (plain completion prompt)'}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .spec import describe_methods

    rows = describe_methods()
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    if args.markdown:
        print(methods_markdown(rows))
        return 0
    print("none          (default) the model as it is: plain chunked prefill, native window")
    for r in rows:
        params = ", ".join(f"{p['name']}={p['default']}" for p in r["params"]) or "no parameters"
        print(f"{r['name']:<13} [{r['slot']}] {r['summary']}")
        print(f"{'':<13} parameters: {params}")
        if r["paper"]:
            print(f"{'':<13} paper: {r['paper']}")
    if not rows:
        print("(no other method is registered in this version)")
    print("\nCompose with '+', e.g. --method yarn:factor=4+kv-int4 (at most one method per slot).")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .errors import SettingError

    # every option is checked here, before the model loads (one line each)
    def size(value: str, flag: str, zero: bool = False) -> int:
        if zero and str(value).strip() == "0":
            return 0
        try:
            return parse_bytes(value)
        except LongreachError as exc:
            raise type(exc)(f"{flag}: {exc}") from None

    key = args.api_key if args.api_key is not None else os.environ.get("LONGREACH_API_KEY")
    if key is not None and not key.strip():
        key = None  # an empty key is no key (the exposure check below then refuses a public --host)
    if key is not None and not (key.isascii() and key.isprintable() and " " not in key):
        raise SettingError("--api-key: use printable ASCII without spaces (it travels in an HTTP header)")
    check_count(args.chunk_size, "--chunk-size", 1, MAX_LENGTH)
    check_count(args.max_running, "--max-running", 1, 64)
    check_count(args.max_queue, "--max-queue", 0, 100_000)
    check_count(args.port, "--port", 0, 65535)
    config = _serve_config(
        served_name=args.served_model_name, method=args.method, host=args.host, port=args.port, api_key=key,
        max_queue=args.max_queue, max_running=args.max_running, request_timeout=args.request_timeout,
        max_body_bytes=size(args.max_body_bytes, "--max-body-bytes"),
        kv_reuse_bytes=size(args.kv_reuse_bytes, "--kv-reuse-bytes", zero=True),
        memory_limit=None if args.memory_limit is None else size(args.memory_limit, "--memory-limit"),
        chunk_size=args.chunk_size, drain_seconds=args.drain_seconds)
    config.check_exposure()
    from .spec import Plan

    plan = Plan.from_spec(args.method)  # a bad spec is one line before the model loads
    check_device(args.device)
    from .models import load_model

    try:
        from .serve.launch import listen, serve
    except ImportError as exc:
        raise LongreachError(f"longreach serve needs the serve extra: pip install 'longreach[serve]' "
                             f"(missing: {exc.name or exc})") from None

    sock = listen(config.host, config.port)  # a port in use fails now, not after the model loads
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    plan.check(lm.info)  # a method that does not fit this model: one line, before the server listens
    serve(lm, config, sock=sock)
    return 0


def _serve_config(**values: object):  # -> ServeConfig
    """A :class:`~longreach.serve.config.ServeConfig`, its validation errors as one line naming the option."""
    import pydantic

    from .errors import SettingError
    from .serve.config import ServeConfig
    from .units import shown_value

    try:
        return ServeConfig(**values)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = str((err.get("loc") or ("?",))[0])
        flag = {"served_name": "--served-model-name"}.get(field, "--" + field.replace("_", "-"))
        msg = " ".join(err["msg"].removeprefix("Value error, ").split())
        got = "" if field == "api_key" else f" (got {shown_value(err.get('input'))})"  # never the key
        raise SettingError(f"{flag}: {msg}{got}") from None


def _cmd_export(args: argparse.Namespace) -> int:
    """``longreach export vllm``: the command line on stdout, warnings on stderr (``# ...`` lines)."""
    from .serve.vllm import export_vllm

    if args.max_model_len is not None:
        check_count(args.max_model_len, "--max-model-len", 1, MAX_LENGTH)
    export = export_vllm(args.model, args.method, args.max_model_len)
    if args.json:
        print(json.dumps(export.as_dict()))
        return 0
    for warning in export.warnings:
        print(f"# {warning}", file=sys.stderr)
    print(export.command())
    return 0


def methods_markdown(rows: list[dict]) -> str:
    """The README's method table, generated from the registry (a test keeps README in sync)."""
    lines = ["| name | slot | what it does | parameters (defaults) | paper |", "|---|---|---|---|---|",
             "| `none` | - | the model as it is: chunked prefill, native window | | |"]
    for r in rows:
        params = ", ".join(f"`{p['name']}={p['default']}`" for p in r["params"])
        lines.append(f"| `{r['name']}` | {r['slot']} | {r['summary']} | {params} | {r['paper']} |")
    return "\n".join(lines)


COMMANDS = {"ask": cmd_ask, "models": cmd_models, "info": cmd_info, "methods": cmd_methods}

from .bench.cli import COMMANDS as _BENCH_COMMANDS  # noqa: E402  (tasks, bench, report)

COMMANDS.update(_BENCH_COMMANDS)
COMMANDS["export"] = _cmd_export
COMMANDS["serve"] = _cmd_serve


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
