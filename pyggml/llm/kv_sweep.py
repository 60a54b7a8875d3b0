"""`pyggml perplexity --kv-sweep`: the KV cache's memory against quality, in one run.

Every cache runs the same perplexity (same text, n_ctx, n_batch, chunks): the F16 cache,
whole caches in Q8_0 and Q4_0 (llama.cpp's -ctk/-ctv), and the mixed cache with hot F16
windows of SWEEP_HOT tokens over a cold store in each of SWEEP_COLD. The table gives each
one's KV bytes at n_ctx, its perplexity, the change against F16, and which share of the
all-Q4_0 cache's loss it avoids: (PPL(Q4_0) - PPL) / (PPL(Q4_0) - PPL(F16)).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

SWEEP_HOT = (16, 32, 64, 128, 256)
SWEEP_COLD = ("q4_0", "q8_0")


@dataclass
class SweepConfig:
    label: str
    llama_kwargs: dict          # Llama(...) keywords selecting the cache


@dataclass
class SweepRow:
    config: SweepConfig
    kv_bytes: int
    ppl: float
    error: float


def sweep_configs(hot=SWEEP_HOT, cold=SWEEP_COLD) -> list:
    out = [SweepConfig("F16", dict(type_k="f16", type_v="f16")),
           SweepConfig("Q8_0 (whole cache)", dict(type_k="q8_0", type_v="q8_0")),
           SweepConfig("Q4_0 (whole cache)", dict(type_k="q4_0", type_v="q4_0"))]
    for c in cold:
        out += [SweepConfig(f"mixed: {h} hot F16 + cold {c.upper()}",
                            dict(kv_cache="mixed", kv_hot=h, type_k=c, type_v=c)) for h in hot]
    return out


def loss_avoided(ppl: float, ppl_f16: float, ppl_q4: float):
    """Share of the all-Q4_0 cache's perplexity loss that a cache avoids (None when Q4_0
    loses nothing to measure against)."""
    loss = ppl_q4 - ppl_f16
    return None if loss <= 0 else (ppl_q4 - ppl) / loss


def format_table(rows: list) -> str:
    """Markdown table of a sweep (the F16 and the whole-Q4_0 rows must be in it)."""
    by = {r.config.label: r for r in rows}
    f16, q4 = by["F16"].ppl, by["Q4_0 (whole cache)"].ppl
    lines = ["| KV cache | KV MiB at n_ctx | perplexity | Δ vs F16 | Q4_0 loss avoided |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        share = loss_avoided(r.ppl, f16, q4)
        lines.append(f"| {r.config.label} | {r.kv_bytes / 2**20:.3f} | {r.ppl:.4f} ± {r.error:.4f} "
                     f"| {r.ppl - f16:+.4f} | {'-' if share is None else f'{100 * share:.0f}%'} |")
    return "\n".join(lines)


def plot(rows: list, path: str, title: str) -> None:
    """Perplexity against KV MiB, one series per cache family (needs matplotlib)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict = {}
    for r in rows:
        kw = r.config.llama_kwargs
        key = f"mixed, cold {kw['type_k'].upper()}" if kw.get("kv_cache") == "mixed" else "whole cache"
        series.setdefault(key, []).append(r)
    for key, rs in series.items():
        rs = sorted(rs, key=lambda r: r.kv_bytes)
        ax.plot([r.kv_bytes / 2**20 for r in rs], [r.ppl for r in rs], marker="o", label=key)
        for r in rs:
            kw = r.config.llama_kwargs
            tag = f"{kw['kv_hot']} hot" if kw.get("kv_cache") == "mixed" else r.config.label.split()[0]
            ax.annotate(tag, (r.kv_bytes / 2**20, r.ppl), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    ax.set_xlabel("KV cache MiB at n_ctx")
    ax.set_ylabel("perplexity")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def run_sweep(make_llm, run_ppl, configs=None, log=None) -> list:
    """make_llm(**llama_kwargs) -> Llama; run_ppl(llm) -> PerplexityResult. Returns rows in
    config order; log(str) reports each finished config."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    rows = []
    for cfg in configs or sweep_configs():
        llm = make_llm(**cfg.llama_kwargs)
        res = run_ppl(llm)
        rows.append(SweepRow(cfg, int(llm.kv_cache_bytes()["total"]), res.ppl, res.error))
        log(f"kv-sweep: {cfg.label}: PPL = {res.ppl:.4f} +/- {res.error:.5f}, "
            f"{rows[-1].kv_bytes / 2**20:.3f} MiB, {res.seconds:.1f} s")
    return rows
