"""Training data on disk (JSON lines) and its tokenisation.

    demonstrations.jsonl  {"prompt": str, "response": str}
    rankings.jsonl        {"prompt": str, "responses": [str, ...], "ranking": [[i, ...], ...]}  best first
    prompts.jsonl         {"prompt": str}
    pretraining.jsonl     {"text": str}

A prompt is the user's message; the policy sees it through its chat template, exactly as the
gateway renders it, so what is trained is what is served.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from inference.prompts import chat_ids, text_ids


@dataclass(frozen=True)
class Ranking:
    """K responses to one prompt and their best-first ranking (inner lists are ties)."""

    prompt: str
    responses: list[str]
    ranking: list[list[int]]


def read_jsonl(path: Path) -> list[dict]:
    """Every record of a JSON-lines file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Write records as JSON lines."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def record_prompt(record: dict) -> str:
    """The prompt of a stage's data record: {"prompt": text} or, multi-turn, {"messages": [...]}."""
    return Conversation(record["messages"]) if "messages" in record else record["prompt"]


def load_rankings(path: Path) -> list[Ranking]:
    """rankings.jsonl as Ranking records."""
    return [Ranking(record_prompt(r), r["responses"], r["ranking"]) for r in read_jsonl(path)]


def read_texts(path: Path, limit: int | None = None) -> list[str]:
    """Pretraining documents, at most `limit`: a JSON-lines file's {"text": ...} records, a text
    file's paragraphs (split at blank lines), or those of every .jsonl/.txt file under a folder
    (in name order, so the same folder gives the same texts)."""
    files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".txt")) if path.is_dir() else [path]
    documents = (text for file in files for text in _documents(file))
    return list(itertools.islice(documents, limit))


def _documents(file: Path) -> Iterator[str]:
    with open(file) as f:  # read as consumed: a corpus may be far larger than what is kept
        if file.suffix == ".txt":
            paragraph: list[str] = []
            for line in itertools.chain(f, [""]):
                if line.strip():
                    paragraph.append(line.rstrip("\n"))
                elif paragraph:
                    yield "\n".join(paragraph).strip()
                    paragraph = []
        else:
            yield from (json.loads(line)["text"] for line in f if line.strip())


def held_out(key: str, fraction: float) -> bool:
    """The one held-out rule: by a hash of the key (a prompt, a text), so an item stays on its side
    of the split from round to round and from run to run, however much data arrives."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def stable_subset(keys: list[str], limit: int) -> list[str]:
    """At most `limit` of keys, always the same ones for the same keys (ordered by their hash), so a
    bounded evaluation set does not change from round to round by chance."""
    return sorted(keys, key=lambda k: hashlib.sha256(k.encode()).hexdigest())[:limit]


class Conversation(str):
    """A multi-turn prompt: a conversation whose last message is the user's, answered next.

    It is a str so that everything that keys, hashes, splits or de-duplicates prompts handles it as
    it handles a single user message: its text is a stable key (the last message and a digest of
    the whole conversation). Its turns are kept apart, as structured messages, and prompt_ids
    renders them with the chat template. Nothing is ever parsed back from text: a plain str prompt
    is always one user message, so no prompt's text can pose as earlier turns or other roles."""

    messages: tuple[tuple[str, str], ...]

    def __new__(cls, messages: list[dict[str, str]]) -> Conversation:
        turns = tuple((m["role"], m["content"]) for m in messages)
        if (
            not turns
            or turns[-1][0] != "user"
            or any(r not in ("system", "user", "assistant") for r, _ in turns)
        ):
            raise ValueError("a conversation is system, user and assistant messages, the last one the user's")
        digest = hashlib.sha256(json.dumps(turns).encode()).hexdigest()[:12]
        self = super().__new__(cls, f"{turns[-1][1]} [conversation {digest}: {len(turns)} messages]")
        self.messages = turns
        return self

    def as_messages(self) -> list[dict[str, str]]:
        """The conversation as chat messages."""
        return [{"role": role, "content": content} for role, content in self.messages]

    def __reduce__(self):  # copied as what it is: str's own reduction would rebuild it from its key
        return (Conversation, (self.as_messages(),))


def prompt_ids(tok: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The token ids the policy sees for a prompt (chat template, generation prompt on): one user
    message, or a Conversation's turns; no message's text is ever read as control tokens, exactly
    as the gateway serves it."""
    messages = (
        prompt.as_messages() if isinstance(prompt, Conversation) else [{"role": "user", "content": prompt}]
    )
    return chat_ids(tok, messages)[1]


def response_ids(tok: PreTrainedTokenizerBase, response: str) -> list[int]:
    """A response's token ids (as text), ending in EOS as a finished reply does."""
    return [*text_ids(tok, response), tok.eos_token_id]


def pad_batch(
    sequences: list[list[int]], pad_id: int, loss_from: list[int] | None = None, max_len: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad to one length; returns (input_ids, attention_mask, loss_mask), where loss_mask
    marks tokens at or after loss_from[i] (the response), or every real token if not given."""
    if max_len is not None:
        sequences = [s[:max_len] for s in sequences]
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(sequences), width), dtype=torch.long)
    loss = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        start = loss_from[i] if loss_from is not None else 0
        loss[i, start : len(s)] = 1
    return ids, attn, loss


def encode_responses(
    tok: PreTrainedTokenizerBase, prompts: list[str], responses: list[str], max_len: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt, response) sequences as one right-padded batch: (input_ids, attention_mask)."""
    seqs = [prompt_ids(tok, p) + response_ids(tok, r) for p, r in zip(prompts, responses)]
    ids, attn, _ = pad_batch(seqs, tok.pad_token_id, max_len=max_len)
    return ids, attn


def encode_pairs(
    tok: PreTrainedTokenizerBase, prompts: list[str], responses: list[str], max_len: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prompt, response) pairs as one padded batch whose loss mask covers the responses only."""
    p = [prompt_ids(tok, x) for x in prompts]
    seqs = [pi + response_ids(tok, y) for pi, y in zip(p, responses)]
    return pad_batch(seqs, tok.pad_token_id, loss_from=[len(pi) for pi in p], max_len=max_len)


def pretraining_batch(
    tok: PreTrainedTokenizerBase, texts: list[str], n: int, rng: random.Random, max_len: int = 128
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n pretraining texts drawn with rng as (ids, attention, loss mask over every real token)."""
    seqs = [[*text_ids(tok, t), tok.eos_token_id] for t in rng.sample(texts, n)]
    return pad_batch(seqs, tok.pad_token_id, max_len=max_len)
