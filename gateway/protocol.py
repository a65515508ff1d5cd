"""The OpenAI-compatible wire format: request and response models, kept apart from serving logic.

Beyond OpenAI's fields, every choice carries an ``id`` (what feedback will reference) and every
response a ``policy_version``; the OpenAI SDK keeps such extra fields (``choice.model_extra``).
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from core.limits import MAX_K, MAX_TEXT_CHARS
from inference.sampling import Sampling

GREEDY_BELOW = 1e-5  # temperatures under this are greedy decoding (vLLM's rule)


def _plain_text(value: str) -> str:
    # JSON may carry "\ud800"; such a string is no text: it cannot be tokenised, stored or sent back.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (a lone surrogate such as \\ud800 is not)") from None
    return value


Text = Annotated[str, AfterValidator(_plain_text)]  # every string a client sends


class StrictRequest(BaseModel):
    # Unknown parameters are refused rather than silently ignored: a client that asks for
    # something we do not do should know.
    model_config = ConfigDict(extra="forbid")


class StreamOptions(StrictRequest):
    include_usage: bool = False


class _SamplingFields(StrictRequest):
    model: Text
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_K)  # K candidates to rank
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Text | list[Text] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    user: Text | None = Field(default=None, max_length=256)
    # vLLM's sampling extras (the OpenAI SDK's `extra_body`), with the meaning and bounds `vllm serve`
    # gives them: clients written for vLLM's server send them (a benchmark client sends
    # repetition_penalty on every request).
    ignore_eos: bool = False  # generate exactly max_tokens
    top_k: int = Field(default=0, ge=-1)  # 0 or -1: every token
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    min_tokens: int = Field(default=0, ge=0)
    stop_token_ids: list[int] | None = Field(default=None, max_length=64)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    # alignloop's: while a candidate version is on canary, half of n >= 2 candidates come from it
    # and half from the serving version, in shuffled positions (the response's policy_version says
    # "mixed", not which is which), so that ranking them compares the two versions blind.
    compare_versions: bool = False

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(len(s) > 64 or not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty sequences of at most 64 characters")
        return v

    @model_validator(mode="after")
    def _n_needs_sampling(self) -> Self:
        if self.n > 1 and self.temperature < GREEDY_BELOW:
            raise ValueError(
                f"n={self.n} candidates need temperature > 0: greedy decoding gives one answer n times"
            )
        return self

    def to_sampling(self, max_tokens: int, logprobs: int | None) -> Sampling:
        """The engine's sampling settings for this request (max_tokens and logprobs resolved by the caller)."""
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return Sampling(
            n=self.n,
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stops,
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logprobs=logprobs,
            ignore_eos=self.ignore_eos,
            final_only=not self.stream,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            min_tokens=self.min_tokens,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            include_stop_str_in_output=self.include_stop_str_in_output,
            skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
        )


class CompletionRequest(_SamplingFields):
    """POST /v1/completions."""

    prompt: Text | list[int] = Field(union_mode="left_to_right")
    max_tokens: int | None = Field(default=None, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: Literal[False] = False
    suffix: None = None


class ChatMessage(StrictRequest):
    role: Literal["system", "user", "assistant"]
    content: Text
    name: Text | None = Field(default=None, max_length=256)


class ChatCompletionRequest(_SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=5)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str] = []
    token_logprobs: list[float] = []
    top_logprobs: list[dict[str, float]] = []
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int
    id: str
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    policy_version: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] = []


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    id: str
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    policy_version: str


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    id: str
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    policy_version: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "alignloop"
    policy_version: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- vLLM's tokenizer routes (/tokenize, /detokenize), as `vllm serve` answers them -----------


class TokenizeRequest(StrictRequest):
    """POST /tokenize: a completions prompt, or chat messages rendered as the gateway would serve them."""

    model: Text | None = None
    prompt: Text | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=256)
    add_special_tokens: bool | None = (
        None  # a prompt's default: True; messages take none (the template has them)
    )
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> Self:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        if self.messages is not None and self.add_special_tokens:
            raise ValueError("add_special_tokens applies to a prompt; the chat template adds its own")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(StrictRequest):
    """POST /detokenize."""

    model: Text | None = None
    tokens: list[int] = Field(max_length=MAX_TEXT_CHARS)


class DetokenizeResponse(BaseModel):
    prompt: str
