"""create_completion / create_chat_completion on a toy character model (fake_llama): the
response shapes of llama-cpp-python, stop strings that never leak (also when streaming),
EOG, max_tokens, a full context, prefix reuse of the cache, the chat template."""
import numpy as np
import pytest
from fake_llama import BOS
from fake_llama import EOS
from fake_llama import VOCAB
from fake_llama import FakeLlama

from pyggml.errors import PromptError
from pyggml.llm.chat import ChatFormatter
from pyggml.llm.chat import create_chat_completion
from pyggml.llm.completion import StopFilter
from pyggml.llm.completion import create_completion
from pyggml.llm.completion import generate
from pyggml.llm.sampling import Sampler

GREEDY = dict(temperature=0.0)


def test_completion_dict_shape():
    llm = FakeLlama()
    r = create_completion(llm, "abc", max_tokens=5, **GREEDY)
    assert r["id"].startswith("cmpl-") and r["object"] == "text_completion"
    assert isinstance(r["created"], int) and r["model"] == "fake.gguf"
    assert r["choices"] == [{"text": "defgh", "index": 0, "logprobs": None,
                             "finish_reason": "length"}]
    assert r["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def test_eog_stops_and_is_not_in_the_text():
    r = create_completion(FakeLlama(), "w", max_tokens=50, **GREEDY)
    assert r["choices"][0]["text"] == "xyz" and r["choices"][0]["finish_reason"] == "stop"
    assert r["usage"]["completion_tokens"] == 3


def test_stop_strings_never_leak():
    r = create_completion(FakeLlama(), "a", max_tokens=50, stop=["fgh", "zzz"], **GREEDY)
    assert r["choices"][0]["text"] == "bcde" and r["choices"][0]["finish_reason"] == "stop"
    # streamed: "f" and "fg" were held back until "fgh" decided it
    chunks = list(create_completion(FakeLlama(), "a", max_tokens=50, stop="fgh", stream=True,
                                    **GREEDY))
    assert "".join(c["choices"][0]["text"] for c in chunks) == "bcde"
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert len({c["id"] for c in chunks}) == 1


def test_held_back_text_is_released_at_length():
    # "def" could start the stop string "defx": held back, then flushed when max_tokens ends
    r = create_completion(FakeLlama(), "c", max_tokens=3, stop=["defx"], **GREEDY)
    assert r["choices"][0]["text"] == "def" and r["choices"][0]["finish_reason"] == "length"


def test_stop_filter_pieces():
    f = StopFilter(["</s>", "ab"])
    assert f.push("xx<") == ("xx", False)
    assert f.push("/") == ("", False)
    assert f.push("p") == ("</p", False)
    assert f.push("za") == ("z", False)
    assert f.push("b!") == ("", True)
    assert StopFilter([]).push("abc") == ("abc", False)


def test_echo_suffix_logprobs():
    r = create_completion(FakeLlama(), "ab", max_tokens=2, echo=True, suffix="!", logprobs=2,
                          **GREEDY)
    ch = r["choices"][0]
    assert ch["text"] == "abcd!"
    lp = ch["logprobs"]
    assert lp["tokens"] == ["c", "d"] and lp["text_offset"] == [2, 3]
    # logits 10 ("c"), 9 ("!"), 0 for the others
    want = -np.log(1 + np.exp(-1) + (len(VOCAB) - 2) * np.exp(-10))
    assert lp["token_logprobs"][0] == pytest.approx(want, rel=1e-6)
    assert set(lp["top_logprobs"][0]) == {"c", "!"}


def test_max_tokens_none_runs_to_the_full_context():
    llm = FakeLlama(n_ctx=12)
    r = create_completion(llm, "!!!!!!", max_tokens=None, **GREEDY)  # "!" -> "a" -> ... no EOG
    assert r["choices"][0]["text"] == "abcdef" and r["choices"][0]["finish_reason"] == "length"
    assert llm.n_tokens == 11          # the last token is sampled, never evaluated


def test_prompt_errors():
    with pytest.raises(PromptError, match="exceeds the context of 8"):
        create_completion(FakeLlama(n_ctx=8), "abcdefghij")
    with pytest.raises(PromptError, match="empty"):
        next(generate(FakeLlama(), [], Sampler()))
    # llama-cpp-python: an empty string prompt is the BOS token alone
    r = create_completion(FakeLlama(), "", max_tokens=1, **GREEDY)
    assert r["usage"]["prompt_tokens"] == 1


def test_prefix_reuse_evaluates_only_new_tokens():
    llm = FakeLlama()
    create_completion(llm, "abc", max_tokens=3, **GREEDY)        # evaluates abc d e (f not)
    assert llm.n_evaluated == 5 and list(llm.input_ids[:5]) == llm.tokenize(b"abcde")
    create_completion(llm, "abcdefg", max_tokens=1, **GREEDY)    # only "fg" is new
    assert llm.n_evaluated == 7
    create_completion(llm, "abcXY", max_tokens=1, **GREEDY)      # "abc" kept, "XY" evaluated
    assert llm.n_evaluated == 9 and list(llm.input_ids[:5]) == llm.tokenize(b"abcXY")
    create_completion(llm, "ab", max_tokens=1, **GREEDY)         # "b" again for its logits
    assert llm.n_evaluated == 10 and llm.n_tokens == 2
    create_completion(llm, "xyz", max_tokens=1, **GREEDY)        # nothing in common
    assert llm.n_evaluated == 13


def test_same_prompt_twice_uses_the_kept_logits():
    llm = FakeLlama()
    a = create_completion(llm, "abc", max_tokens=1, **GREEDY)
    b = create_completion(llm, "abc", max_tokens=1, **GREEDY)
    assert a["choices"][0]["text"] == b["choices"][0]["text"] == "d" and llm.n_evaluated == 3


def test_seeded_sampling_is_reproducible():
    def run(seed):
        return create_completion(FakeLlama(), "a", max_tokens=8, temperature=5.0, top_k=0,
                                 top_p=1.0, min_p=0.0, seed=seed)
    assert run(3)["choices"][0]["text"] == run(3)["choices"][0]["text"]


def test_chat_template_rendering():
    f = ChatFormatter(FakeLlama().metadata["tokenizer.chat_template"], "<s>", "</s>")
    assert f.render([{"role": "user", "content": "hi"}]) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    bad = ChatFormatter("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(PromptError, match="roles must alternate"):
        bad.render([{"role": "user", "content": "x"}])
    with pytest.raises(PromptError, match="does not compile"):
        ChatFormatter("{% for %}")
    # the sandbox refuses attribute games
    evil = ChatFormatter("{{ messages.__class__.__mro__ }}")
    with pytest.raises(PromptError):
        evil.render([{"role": "user", "content": "x"}])


def test_chat_completion_and_turns_reuse_the_cache():
    llm = FakeLlama(n_ctx=256)
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    r = create_chat_completion(llm, msgs, max_tokens=4, **GREEDY)
    assert r["id"].startswith("chatcmpl-") and r["object"] == "chat.completion"
    assert r["choices"][0]["message"] == {"role": "assistant", "content": "abcd"}
    assert r["choices"][0]["finish_reason"] == "length"
    n_prompt = r["usage"]["prompt_tokens"]
    rendered = ("<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert llm.input_ids[0] == BOS and n_prompt == len(llm.tokenize(rendered.encode(), special=True)) == 34
    before = llm.n_evaluated
    msgs += [r["choices"][0]["message"], {"role": "user", "content": "more"}]
    create_chat_completion(llm, msgs, max_tokens=2, **GREEDY)
    # new: "d" (sampled last turn, never evaluated) + "<|im_end|>\n<|im_start|>user\nmore
    # <|im_end|>\n<|im_start|>assistant\n" + the first generated token
    assert llm.n_evaluated - before == 1 + (1 + 1 + 1 + 5 + 4 + 1 + 1 + 1 + 10) + 1


def test_chat_stream_chunks_and_eos():
    llm = FakeLlama()
    chunks = list(create_chat_completion(llm, [{"role": "user", "content": "w"}], stream=True,
                                         **GREEDY))
    # after "assistant\n" the toy model says "a..z" then <|im_end|> (EOG)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "abcdefghijklmnopqrstuvwxyz"
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": "stop"}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    n_prompt = 1 + len("user\nw") + 1 + 1 + 1 + len("assistant\n")   # specials: 1 token
    assert llm.n_tokens == n_prompt + 26 and llm.input_ids[llm.n_tokens - 1] != EOS


def test_chat_bad_messages_and_no_template():
    with pytest.raises(PromptError, match="non-empty list"):
        create_chat_completion(FakeLlama(), [])
    with pytest.raises(PromptError, match="message 0"):
        create_chat_completion(FakeLlama(), ["hi"])
    # no template in the file: llama.cpp's ChatML fallback
    r = create_chat_completion(FakeLlama(template=None), [{"role": "user", "content": "x"}],
                               max_tokens=2, **GREEDY)
    assert r["choices"][0]["message"]["content"] == "ab"
