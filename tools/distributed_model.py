"""The paper model of docs/DISTRIBUTED.md: bytes per generated token across the network and
expected decode tokens/s for layer split vs context split, from the op shapes of a 70B-class
llama (Llama-3-70B: 80 layers, n_embd 8192, 64/8 heads of 128, n_ff 28672, Q4_0 weights).

Assumptions (printed with the table): every machine streams its weights and KV cache from
memory at MEM_BW per token (decode is bandwidth-bound); a network hop costs LATENCY plus
bytes / link bandwidth; activations travel in F32 as pyggml sends them.

    python tools/distributed_model.py
"""
from __future__ import annotations

N_LAYER, N_EMBD, N_HEAD, N_HEAD_KV, HEAD_DIM, N_FF, N_VOCAB = 80, 8192, 64, 8, 128, 28672, 128256
Q4_0_BYTES = 18 / 32                 # bytes per weight
F16, F32 = 2, 4
MEM_BW = 100e9                       # bytes/s a machine streams from memory
LATENCY = 50e-6                      # one-way hop latency, s
WORKERS = 4


def weight_bytes() -> float:
    per_layer = (2 * N_EMBD * N_HEAD * HEAD_DIM + 2 * N_EMBD * N_HEAD_KV * HEAD_DIM
                 + 3 * N_EMBD * N_FF)
    return (N_LAYER * per_layer + 2 * N_EMBD * N_VOCAB) * Q4_0_BYTES


def kv_bytes(n_ctx: int, elt: float = F16) -> float:
    return 2 * N_LAYER * N_HEAD_KV * HEAD_DIM * n_ctx * elt


def layer_split(n_ctx: int, link: float, w: int = WORKERS) -> tuple:
    """Driver -> w0 -> ... -> w_{W-1} -> driver: one hidden state per hop; stages run one
    after the other for one sequence, so compute time is the whole model's."""
    hops = w + 1
    net_bytes = hops * N_EMBD * F32
    t = (weight_bytes() + kv_bytes(n_ctx)) / MEM_BW + hops * LATENCY + net_bytes / link
    return net_bytes, t


def context_split(n_ctx: int, link: float, w: int = WORKERS) -> tuple:
    """Weights on the driver; per layer q to every worker, the new K/V row to one, (O, M, S)
    back from every worker; the shards' attention runs in parallel."""
    q = N_HEAD * HEAD_DIM * F32
    o = N_HEAD * HEAD_DIM * F32 + N_HEAD * 2 * F32
    kv_row = 2 * N_HEAD_KV * HEAD_DIM * F32
    per_layer = w * (q + o) + kv_row
    net_bytes = N_LAYER * per_layer
    t = (weight_bytes() / MEM_BW + kv_bytes(n_ctx) / w / MEM_BW
         + N_LAYER * 2 * LATENCY + net_bytes / link)
    return net_bytes, t


def main() -> None:
    print(f"70B-class model: weights {weight_bytes() / 1e9:.1f} GB (Q4_0); KV cache "
          f"{kv_bytes(8192) / 1e9:.1f} GB at 8k, {kv_bytes(131072) / 1e9:.1f} GB at 128k (F16)")
    print(f"{WORKERS} workers; memory {MEM_BW / 1e9:.0f} GB/s per machine; hop latency "
          f"{LATENCY * 1e6:.0f} us\n")
    print("| context | link | split | network bytes/token | s/token | tokens/s |")
    print("|---|---|---|---|---|---|")
    for n_ctx in (8192, 131072):
        for gbit in (10, 100):
            link = gbit * 1e9 / 8
            for name, f in (("layer", layer_split), ("context", context_split)):
                b, t = f(n_ctx, link)
                print(f"| {n_ctx // 1024}k | {gbit} Gb/s | {name} | {b / 1024:,.0f} KiB | "
                      f"{t:.3f} | {1 / t:.2f} |")


if __name__ == "__main__":
    main()
