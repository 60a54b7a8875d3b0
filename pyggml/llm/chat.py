"""Chat completion through the GGUF's own chat template (`tokenizer.chat_template`), rendered
as llama-cpp-python's Jinja2ChatFormatter renders it: a sandboxed jinja2 environment with
trim_blocks/lstrip_blocks, `raise_exception`, `add_generation_prompt=True`, and the BOS/EOS
tokens' text; the EOS text is a stop string and every end-of-generation token stops.

Turns reuse the cache: the rendered conversation of turn n+1 starts with the tokens of turn n
(prompt and reply), so only the new messages are evaluated (see completion.generate)."""
from __future__ import annotations

from datetime import datetime

from ..errors import PromptError
from .completion import create_completion

# llama.cpp's fallback when a model has no template
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


class ChatFormatter:
    """A model's template compiled once; `render(messages) -> prompt text`."""

    def __init__(self, template: str, bos_token: str = "", eos_token: str = ""):
        from jinja2 import BaseLoader
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        self.template, self.bos_token, self.eos_token = template, bos_token, eos_token
        env = ImmutableSandboxedEnvironment(loader=BaseLoader(), trim_blocks=True,
                                            lstrip_blocks=True)
        try:
            self._tmpl = env.from_string(template)
        except TemplateError as e:
            raise PromptError(f"chat template does not compile: {e}") from None

    def render(self, messages: list, add_generation_prompt: bool = True, **extra) -> str:
        from jinja2 import TemplateError

        def raise_exception(message):
            raise PromptError(f"chat template: {message}")

        try:
            return self._tmpl.render(
                messages=messages, bos_token=self.bos_token, eos_token=self.eos_token,
                raise_exception=raise_exception, add_generation_prompt=add_generation_prompt,
                strftime_now=lambda fmt: datetime.now().strftime(fmt), **extra)
        except TemplateError as e:
            raise PromptError(f"chat template failed on the messages: {e}") from None

    @classmethod
    def for_model(cls, llama) -> ChatFormatter:
        def text(tok: int) -> str:
            return llama.detokenize([tok], special=True).decode("utf-8", errors="replace") \
                if tok is not None and tok >= 0 else ""
        template = llama.metadata.get("tokenizer.chat_template") or CHATML
        return cls(template, bos_token=text(llama.token_bos()), eos_token=text(llama.token_eos()))


def formatter(llama) -> ChatFormatter:
    """The model's formatter, compiled on first use and kept on the Llama."""
    f = getattr(llama, "_chat_formatter", None)
    if f is None:
        f = ChatFormatter.for_model(llama)
        llama._chat_formatter = f
    return f


def _check_messages(messages) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise PromptError("chat: messages must be a non-empty list of {'role', 'content'} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise PromptError(f"chat: message {i} is not a dict with a 'role': {m!r}")


def chat_prompt(llama, messages: list, stop=None) -> tuple[list, list]:
    """The conversation rendered by the model's template and tokenized, and the stop
    strings (the caller's and the template's end token)."""
    _check_messages(messages)
    fmt = formatter(llama)
    prompt = fmt.render(list(messages))
    # the template writes the special tokens itself (llama-cpp-python: added_special)
    tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if fmt.eos_token:
        stops.append(fmt.eos_token)
    return tokens, stops


def create_chat_completion(llama, messages: list, temperature: float = 0.2,
                           top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05,
                           typical_p: float = 1.0, stream: bool = False, stop=None,
                           seed: int | None = None, max_tokens: int | None = None,
                           presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                           repeat_penalty: float = 1.0, logprobs: bool = False,
                           top_logprobs: int | None = None, model: str | None = None):
    """llama-cpp-python's Llama.create_chat_completion (defaults included) on a pyggml Llama."""
    tokens, stops = chat_prompt(llama, messages, stop)
    out = create_completion(
        llama, tokens, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
        min_p=min_p, typical_p=typical_p, top_k=top_k, stop=stops, seed=seed, stream=stream,
        presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
        repeat_penalty=repeat_penalty, model=model,
        logprobs=(top_logprobs or 0) if logprobs else None)
    return _chat_chunks(out) if stream else _chat_response(out)


def _chat_response(c: dict) -> dict:
    ch = c["choices"][0]
    return {"id": "chat" + c["id"], "object": "chat.completion", "created": c["created"],
            "model": c["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ch["text"]},
                         "logprobs": ch["logprobs"], "finish_reason": ch["finish_reason"]}],
            "usage": c["usage"]}


def _chat_chunks(chunks):
    first = True
    for c in chunks:
        ch = c["choices"][0]
        head = {"id": "chat" + c["id"], "object": "chat.completion.chunk",
                "created": c["created"], "model": c["model"]}
        if first:
            first = False
            yield dict(head, choices=[{"index": 0, "delta": {"role": "assistant"},
                                       "logprobs": None, "finish_reason": None}])
        if ch["text"]:
            yield dict(head, choices=[{"index": 0, "delta": {"content": ch["text"]},
                                       "logprobs": ch["logprobs"], "finish_reason": None}])
        if ch["finish_reason"]:
            yield dict(head, choices=[{"index": 0, "delta": {}, "logprobs": None,
                                       "finish_reason": ch["finish_reason"]}])
