"""Sampler chain: each stage against a hand computation (llama.cpp's llama-sampling.cpp
semantics), the chain's order, determinism by seed, greedy."""
import numpy as np
import pytest

from pyggml.errors import ParamError
from pyggml.llm import sampling as S
from pyggml.llm.sampling import Sampler
from pyggml.llm.sampling import SamplingParams


def test_penalties_hand_computed():
    logits = np.array([2.0, -1.0, 0.5, 3.0, 0.0], dtype=np.float32)
    last = [0, 1, 1, 4, 7]                    # 7 is outside the vocab: ignored
    out = S.penalties(logits, last, repeat=2.0, freq=0.5, present=0.25)
    # token 0: 2/2 - 1*0.5 - 0.25; token 1: -1*2 - 2*0.5 - 0.25; token 4: 0*2 - 0.5 - 0.25
    np.testing.assert_allclose(out, [0.25, -3.25, 0.5, 3.0, -0.75])
    assert logits[0] == 2.0                                   # the input is not touched
    assert S.penalties(logits, last, 1.0, 0.0, 0.0) is logits  # disabled: no copy


def test_top_k_sorted_and_off():
    x = np.array([0.1, 5.0, -2.0, 3.0, 4.0, 2.0], dtype=np.float32)
    ids, v = S.top_k(None, x, 3)
    assert list(ids) == [1, 4, 3] and list(v) == [5.0, 4.0, 3.0]
    assert S.top_k(None, x, 0)[0] is None and S.top_k(None, x, 6)[0] is None


@pytest.mark.parametrize("n,k", [(49152, 40), (49152, 1), (5000, 40), (70000, 1024)])
def test_largest_equals_partition(n, k):
    rng = np.random.default_rng(n + k)
    for x in (rng.standard_normal(n).astype(np.float32),
              np.zeros(n, np.float32),                        # all tied
              np.sort(rng.standard_normal(n)).astype(np.float32)):  # adversarial order
        got = np.sort(x[S._largest(x, k)])
        want = np.sort(x)[-k:]
        np.testing.assert_array_equal(got, want)


def _logits_of(probs):
    return np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32)


def test_top_p_keeps_the_token_that_reaches_p():
    x = _logits_of([0.05, 0.5, 0.15, 0.3])
    assert list(S.top_p(None, x, 0.75)[0]) == [1, 3]          # 0.5 + 0.3 reaches 0.75
    assert list(S.top_p(None, x, 0.81)[0]) == [1, 3, 2]
    assert list(S.top_p(None, x, 0.1)[0]) == [1]
    assert list(S.top_p(None, x, 0.1, min_keep=3)[0]) == [1, 3, 2]
    assert S.top_p(None, x, 1.0)[0] is None


def test_top_p_whole_vocab_shortcut_equals_full_sort():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(49152) * 4).astype(np.float32)    # peaked: nucleus in the head
    ids, _ = S.top_p(None, x, 0.9)
    p = np.exp(x - x.max())
    p /= p.sum()
    order = np.argsort(-x, kind="stable")
    n = int(np.searchsorted(np.cumsum(p[order]), 0.9)) + 1
    np.testing.assert_array_equal(np.sort(ids), np.sort(order[:n]))


def test_min_p_relative_to_the_max():
    x = _logits_of([0.5, 0.04, 0.3, 0.06, 0.12])
    assert sorted(S.min_p(None, x, 0.2)[0]) == [0, 2, 4]      # p >= 0.2 * 0.5
    assert S.min_p(None, x, 0.0)[0] is None
    ids = np.array([7, 8, 9, 10, 11])
    assert sorted(S.min_p(ids, x, 0.9)[0]) == [7]
    assert sorted(S.min_p(ids, x, 0.9, min_keep=2)[0]) == [7, 8, 9, 10, 11]  # would drop too many


def test_typical_hand_computed():
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    x = _logits_of(probs)
    h = -(probs * np.log(probs)).sum()
    order = np.argsort(np.abs(-np.log(probs) - h))            # closest surprise to entropy first
    cum = np.cumsum(probs[order])
    n = int(np.argmax(cum > 0.5)) + 1
    assert list(S.typical(None, x, 0.5)[0]) == list(order[:n])
    assert S.typical(None, x, 1.0)[0] is None


def test_chain_order_top_k_then_top_p_renormalizes():
    # after top-k 2 the two survivors renormalize to 0.6/0.4: top-p 0.55 keeps one only;
    # over the whole vocabulary (no top-k) 0.3 + 0.2 < 0.55 would keep three
    x = _logits_of([0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1])
    s = Sampler(temperature=1.0, top_k=2, top_p=0.55, min_p=0.0)
    assert list(s.apply(x)[0]) == [0]
    s = Sampler(temperature=1.0, top_k=0, top_p=0.55, min_p=0.0)
    assert len(s.apply(x)[0]) == 3


def test_temperature_comes_after_the_filters():
    x = _logits_of([0.5, 0.3, 0.15, 0.05])
    for t in (0.1, 1.0, 10.0):
        ids, v = Sampler(temperature=t, top_k=0, top_p=1.0, min_p=0.2).apply(x)
        assert sorted(ids) == [0, 1, 2]                       # min-p on untempered logits
        np.testing.assert_allclose(v, x[ids] / t, rtol=1e-6)


def test_draw_follows_softmax_and_seed():
    x = _logits_of([0.6, 0.3, 0.1])
    s = Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=42)
    draws = np.array([s.sample(x) for _ in range(4000)])
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [0.6, 0.3, 0.1], atol=0.03)
    # temperature 2 flattens: p ~ sqrt(p)
    s2 = Sampler(temperature=2.0, top_k=0, top_p=1.0, min_p=0.0, seed=42)
    freq2 = np.bincount([s2.sample(x) for _ in range(4000)], minlength=3) / 4000
    want = np.sqrt([0.6, 0.3, 0.1])
    want /= want.sum()
    np.testing.assert_allclose(freq2, want, atol=0.03)


def test_determinism_by_seed():
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((50, 1000)).astype(np.float32)
    def run(seed):
        return [Sampler(seed=seed, temperature=1.5, min_p=0.0).sample(r) for r in rows]
    a, b, c = run(7), run(7), run(8)
    assert a == b and a != c


def test_greedy_is_argmax_after_penalties():
    x = np.array([1.0, 3.0, 2.9, -5.0], dtype=np.float32)
    assert Sampler(temperature=0.0).sample(x) == 1
    assert Sampler(temperature=-1.0).sample(x, context=[0]) == 1
    # a repeat penalty on token 1 lets token 2 win; beyond the last-n window it does not
    assert Sampler(temperature=0.0, repeat_penalty=1.5).sample(x, context=[1]) == 2
    assert Sampler(temperature=0.0, repeat_penalty=1.5, repeat_last_n=2).sample(
        x, context=[1, 3, 3]) == 1
    assert Sampler(temperature=0.0, repeat_penalty=1.5, repeat_last_n=0).sample(
        x, context=[1]) == 1


def test_bad_params():
    with pytest.raises(ParamError, match="top_p"):
        SamplingParams(top_p=-0.1)
    with pytest.raises(ParamError, match="repeat_penalty"):
        Sampler(repeat_penalty=0.0)
