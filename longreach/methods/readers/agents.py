"""``agents``: multi-agent reading (ExtAgents): chunk agents note what bears on the question, share their best
notes over synchronisation rounds, a coordinator answers from the notes."""

from __future__ import annotations

from typing import Any

from ...spec import Length, LengthOrZero, Method, register

MAX_WORKERS = 64


@register
class Agents(Method):
    """ExtAgents: the document split over chunk agents, knowledge synchronisation, a coordinator's answer.

    Paper: "Scaling External Knowledge Input Beyond Context Windows of LLMs via Multi-Agent Collaboration",
    Liu et al. 2025, https://arxiv.org/abs/2505.21471. The document is split at sentence boundaries over N
    agents (the same model, one window-sized chunk each, every token to exactly one agent); each agent
    writes the facts of its chunk that bear on the question; in each synchronisation round every agent
    reads its chunk again with the other agents' best findings (BM25 against the question) and revises
    its own; a coordinator answers the question from all findings in document order (the lowest-ranked
    dropped first when they overflow the window). Cost: N agent reads per round, (rounds + 1) x N + 1
    model calls in all. The findings are the evidence. See docs/agents.md.

    Parameters:
      agents          number of chunk agents; 0 = as many as the chunk budget needs (default).
      rounds          synchronisation rounds after the first reading (0 = none), default 1.
      findings        finding lines kept per agent and round, default 3.
      chunk           document tokens per agent at most; 0 = what the window leaves (default).
      finding_tokens  tokens each agent may write per round (at most 1/8 of the window), default 96.
      workers         agents of a round run at once in a thread pool (default 1); plans that change the
                      model (rope / attention methods) still run them one at a time (the model's lock).
    """

    name = "agents"
    slot = "reader"
    paper = ("Scaling External Knowledge Input Beyond Context Windows of LLMs via Multi-Agent Collaboration "
             "(arXiv 2505.21471)")
    summary = "the input split over chunk agents that share findings; a coordinator answers: unbounded input"
    extends = True

    agents: int = 0
    rounds: int = 1
    findings: int = 3
    chunk: LengthOrZero = 0
    finding_tokens: Length = 96
    workers: int = 1

    def __post_init__(self) -> None:
        if self.agents < 0:
            raise ValueError(f"agents={self.agents} must be 0 (as many as needed) or a number of agents")
        if not 0 <= self.rounds <= 16:
            raise ValueError(f"rounds={self.rounds} must be 0 (no synchronisation) to 16, default 1")
        if self.findings < 1:
            raise ValueError(f"findings={self.findings} must be at least 1 (default 3)")
        if self.finding_tokens < 8:
            raise ValueError(f"finding_tokens={self.finding_tokens} must be at least 8 (default 96)")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers={self.workers} must be 1 to {MAX_WORKERS} (default 1)")

    def reach(self, info: Any) -> int | None:
        return None  # every agent reads one window-sized chunk: the input length is unbounded

    def make_reader(self) -> Any:
        from ...readers.agents import AgentsReader

        return AgentsReader(self.agents, self.rounds, self.findings, self.chunk, self.finding_tokens, self.workers)
