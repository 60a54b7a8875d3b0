"""A stand-in for pyggml.llm.Llama (llama-cpp-python's interface) over a toy character
model, for testing the completion loop, chat and the CLIs without weights: each token is
one character, and the "model" predicts the character that follows the last one in ALPHABET
(after the last letter: the end-of-generation token)."""
import numpy as np

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHARS = [chr(c) for c in range(32, 127)] + ["\n", "é"]
VOCAB = SPECIAL + CHARS
EOS = VOCAB.index("<|im_end|>")
BOS = VOCAB.index("<|im_start|>")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


class FakeDecoder:
    def __init__(self):
        self.buf = b""

    def feed(self, tok: int) -> str:
        self.buf += VOCAB[tok].encode() if tok >= len(SPECIAL) else b""
        try:
            out, self.buf = self.buf.decode(), b""
        except UnicodeDecodeError:
            out = ""
        return out


class FakeTokenizer:
    eog_ids = {EOS, VOCAB.index("<|endoftext|>")}

    def is_eog(self, tok: int) -> bool:
        return tok in self.eog_ids

    def decoder(self):
        return FakeDecoder()


class FakeLlama:
    def __init__(self, n_ctx: int = 128, template: str = CHATML, model_path: str = "fake.gguf"):
        self._n_ctx = n_ctx
        self.model_path = model_path
        self.tokenizer_ = FakeTokenizer()
        self.metadata = {"tokenizer.chat_template": template} if template else {}
        self.scores = np.zeros((n_ctx, len(VOCAB)), dtype=np.float32)
        self.input_ids = np.zeros(n_ctx, dtype=np.intc)
        self.n_tokens = 0
        self.n_evaluated = 0            # every token ever evaluated (prefix reuse shows here)

    def n_ctx(self) -> int:
        return self._n_ctx

    def n_vocab(self) -> int:
        return len(VOCAB)

    def token_bos(self) -> int:
        return BOS

    def token_eos(self) -> int:
        return EOS

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list:
        s, out = text.decode(), []
        while s:
            sp = next((t for t in SPECIAL if special and s.startswith(t)), None)
            if sp:
                out.append(VOCAB.index(sp))
                s = s[len(sp):]
            else:
                out.append(VOCAB.index(s[0]))
                s = s[1:]
        return out

    def detokenize(self, tokens, special: bool = False) -> bytes:
        return "".join(VOCAB[t] for t in tokens
                       if special or t >= len(SPECIAL)).encode()

    def logits(self):
        return self.scores[self.n_tokens - 1]

    def close(self) -> None:              # Llama.close (run closes its model at the end)
        self.closed = True

    def reset(self) -> None:
        self.n_tokens = 0

    def eval(self, tokens) -> None:
        assert self.n_tokens + len(tokens) <= self._n_ctx
        for t in tokens:
            self.input_ids[self.n_tokens] = t
            row = np.zeros(len(VOCAB), dtype=np.float32)
            ch = VOCAB[t]
            i = ALPHABET.find(ch) if len(ch) == 1 else -1
            nxt = EOS if ch == "z" else VOCAB.index(ALPHABET[i + 1]) if i >= 0 else \
                VOCAB.index("a")
            row[nxt] = 10.0
            row[VOCAB.index("!")] = 9.0                 # a runner-up, for logprobs
            self.scores[self.n_tokens] = row
            self.n_tokens += 1
        self.n_evaluated += len(tokens)

    def __call__(self, prompt, **kw):
        from pyggml.llm.completion import create_completion
        return create_completion(self, prompt, **kw)

    def create_chat_completion(self, messages, **kw):
        from pyggml.llm.chat import create_chat_completion
        return create_chat_completion(self, messages, **kw)
