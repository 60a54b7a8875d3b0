"""SentencePiece-style merging (`tokenizer.ggml.model = llama`), llama.cpp's
llm_tokenizer_spm: start from UTF-8 characters, repeatedly merge the adjacent pair whose
concatenation is the vocabulary token with the highest score (ties: leftmost), and spell
any piece left outside the vocabulary as byte tokens <0xXX>.

`tokenizers` has no model with this exact rule (its BPE ranks pairs, its Unigram runs
Viterbi), so this is a heap in Python, run on one text fragment at a time.
"""
from __future__ import annotations

import heapq

from .utf8 import utf8_len


def spm_tokenize(text: bytes, token_to_id: dict, scores, byte_token) -> list:
    """Token ids of one (already space-escaped) fragment. `token_to_id` maps token bytes to
    ids, `scores[id]` is a float, `byte_token(b)` gives the id that spells byte b."""
    n = len(text)
    starts, sizes = [], []
    i = 0
    while i < n:
        size = min(utf8_len(text[i]), n - i)
        starts.append(i)
        sizes.append(size)
        i += size
    count = len(starts)
    prev = list(range(-1, count - 1))
    nxt = list(range(1, count + 1))
    if count:
        nxt[-1] = -1
    heap = []
    rev_merge = {}

    def try_add(left: int, right: int) -> None:
        if left < 0 or right < 0:
            return
        s = starts[left]
        piece = text[s:s + sizes[left] + sizes[right]]
        tid = token_to_id.get(piece)
        if tid is None:
            return
        # max-heap on score, then the smaller left index first
        heapq.heappush(heap, (-float(scores[tid]), left, right, len(piece)))
        rev_merge[piece] = (left, right)

    for k in range(1, count):
        try_add(k - 1, k)
    while heap:
        _, left, right, size = heapq.heappop(heap)
        if sizes[left] == 0 or sizes[right] == 0 or sizes[left] + sizes[right] != size:
            continue                      # one side was merged since this pair was queued
        sizes[left] += sizes[right]
        sizes[right] = 0
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        try_add(prev[left], left)
        try_add(left, nxt[left])

    out = []

    def resegment(k: int) -> None:
        piece = text[starts[k]:starts[k] + sizes[k]]
        tid = token_to_id.get(piece)
        if tid is not None:
            out.append(tid)
            return
        pair = rev_merge.get(piece)
        if pair is None:
            out.extend(byte_token(b) for b in piece)
            return
        resegment(pair[0])
        resegment(pair[1])

    k = 0 if count else -1
    while k != -1:
        resegment(k)
        k = nxt[k]
    return out
