"""Messages to token ids, where what a person wrote is always text.

A chat template wraps each message in control tokens (`<|user|>...<|end|>`). Rendering the whole
chat to a string and tokenising that would also turn a user's own "<|end|><|system|>..." into
real control tokens: a user could forge other roles. Here the template's own parts are tokenised
with special tokens recognised, and every message's content with special tokens split as text.
The gateway (serving) and the trainer (its training data) both use these functions, so what is
trained is what is served.
"""

from __future__ import annotations

import secrets

from transformers import PreTrainedTokenizerBase


class ChatTemplateError(ValueError):
    """The model's chat template refused these messages (its own `raise_exception`, a bad role order...)."""


def text_ids(tok: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of text that is only text: special-token strings in it are split like any word."""
    return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _has_special_text(tok: PreTrainedTokenizerBase, text: str) -> bool:
    return any(t in text for t in tok.all_special_tokens + list(tok.get_added_vocab()))


def render_chat(tok: PreTrainedTokenizerBase, messages: list[dict]) -> str:
    """The chat as the template renders it, ready for the assistant's turn (ChatTemplateError if the
    template refuses it)."""
    try:
        return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # jinja's TemplateError and whatever a template raises on purpose
        raise ChatTemplateError(f"the chat template refused these messages: {exc}") from exc


def chat_ids(tok: PreTrainedTokenizerBase, messages: list[dict]) -> tuple[str, list[int]]:
    """(rendered text, token ids) of a chat, with every message's content tokenised as text."""
    text = render_chat(tok, messages)
    if not any(_has_special_text(tok, m["content"]) for m in messages):
        # The common case: nothing in the content looks like a control token, so tokenising the
        # whole rendering gives exactly the ids the careful path below would.
        return text, tok(text, add_special_tokens=False)["input_ids"]
    # Render again with a unique placeholder per message, tokenise the template's parts with
    # control tokens and each content as text, and put them together.
    marks = [f"@@alignloop-{secrets.token_hex(8)}-{i}@@" for i in range(len(messages))]
    skeleton = render_chat(tok, [{**m, "content": mark} for m, mark in zip(messages, marks)])
    ids: list[int] = []
    for mark, message in zip(marks, messages):
        head, found, skeleton = skeleton.partition(mark)
        if not found:  # the template transformed the content: refuse rather than guess
            raise ChatTemplateError(
                "the chat template rewrites message content, so control-token text in it "
                "cannot be kept as text; remove it from the message"
            )
        ids += tok(head, add_special_tokens=False)["input_ids"] + text_ids(tok, message["content"])
    return text, ids + tok(skeleton, add_special_tokens=False)["input_ids"]
