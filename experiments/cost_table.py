"""What profiling RD curves costs on real LLMs, from their shapes and a measured GPU rate.

The rate is the one measured on an H200 by ``experiments/gpu_lm_check.py`` (TinyLlama-1.1B shapes,
random init, float32, the LM fast path: ``results/gpu_lm_check.json``): FLOPs of one grid point
of a block-0 layer (the whole model downstream of it, no head) divided by its measured seconds. Every
cost below is FLOPs at that rate: float32 throughput (bfloat16 would be faster; not measured here,
no GPU was lent to this session). FLOPs per token of a forward: 2 x the block weights, plus the
attention scores at context T (4 x T x hidden per block); calibration 128 x 2048 tokens.

Estimators (``rd.estimator``; :mod:`rdprune.methods.rd.estimators`):

- exact, every one of G grid points: each layer's downstream share of a forward per point;
- local (the language models' default, read from ``conf/model/hf_lm.yaml``: k gain anchors on a
  fraction f of the tokens): one reference forward, one Gram forward, k anchors x each layer's
  downstream share x f, plus the closed-form layer errors ``tr(dW G dW^T)`` at every grid point
  (2 d_out d_in^2 FLOPs per layer per point).

    python experiments/cost_table.py            # -> the table of docs/language-models.md
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
TOKENS, T, GRID = 128 * 2048, 2048, 101


def local_default() -> tuple[int, float]:
    """(anchors, token fraction) of the language models' default estimator."""
    rd = OmegaConf.load(ROOT / "conf" / "model" / "hf_lm.yaml").rd
    assert rd.estimator == "local" and isinstance(rd.tokens, float), rd
    points = rd.get("points")  # null or absent: the estimator's 2
    return (2 if points is None else int(points)), float(rd.tokens)


ANCHORS, FRACTION = local_default()


@dataclass
class Shape:
    name: str
    blocks: int
    hidden: int
    intermediate: int
    kv: int  # key/value width (grouped-query attention: fewer than hidden)

    def linears(self) -> list[tuple[int, int]]:
        """(d_out, d_in) of one block's linears: q, k, v, o, gate, up, down."""
        h, i, kv = self.hidden, self.intermediate, self.kv
        return [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]

    @property
    def weights(self) -> int:
        return self.blocks * sum(a * b for a, b in self.linears())

    def flops_per_token(self) -> float:
        return 2.0 * self.weights + 4.0 * T * self.hidden * self.blocks

    def forward(self) -> float:
        return self.flops_per_token() * TOKENS

    def downstream(self) -> list[float]:
        """Per linear, the share of a forward from its block on (the fast path re-runs it)."""
        per_block = len(self.linears())
        return [(self.blocks - b) / self.blocks for b in range(self.blocks)
                for _ in range(per_block)]

    def closed_forms(self) -> float:
        return self.blocks * GRID * sum(2.0 * a * b * b for a, b in self.linears())


SHAPES = [Shape("TinyLlama-1.1B", 22, 2048, 5632, 256), Shape("LLaMA-7B", 32, 4096, 11008, 4096),
          Shape("Llama-3.1-8B", 32, 4096, 14336, 1024), Shape("LLaMA-2-70B", 80, 8192, 28672, 1024)]
#: the walkthrough's models
WALKTHROUGH = [Shape("Llama-3.2-1B", 16, 2048, 8192, 512), SHAPES[2]]
EVAL_TOKENS = 300_000  # the WikiText-2 test split with a Llama tokenizer, about


def method_forwards(s: Shape) -> dict[str, float]:
    """Per method, its cost in forwards of the calibration set (128 x 2,048 tokens): the
    sequential pruning pass runs every block twice (statistics, then the pruned outputs: 2),
    the dense and pruned evaluations one forward of the test split each."""
    ev = 2 * EVAL_TOKENS / TOKENS
    base = 2 + ev
    layers, blocks = sum(s.downstream()), sum(s.downstream()[::7])
    closed = s.closed_forms() / s.forward()
    stage_tokens = sum(n * TOKENS * k // 524_288 for n, k in ((64, 2_048), (8, 16_384),
                                                             (3, 65_536)))
    generations = round(400 * 7 * s.blocks / 224)
    return {"uniform, global_magnitude, lamp, erk": base, "owl, dlp": base + 1,
            "alpha_pruning (+ an SVD per linear)": base,
            "atp (6 betas on the validation split)": base + 6 * (2 + EVAL_TOKENS / TOKENS),
            "ours (local estimator)": base + 2 + ANCHORS * FRACTION * layers + closed,
            "ours_block (local estimator)": base + 2 + ANCHORS * FRACTION * blocks + closed,
            "evopress (scaled search)": base + 1 + generations * stage_tokens / TOKENS}


def method_table() -> str:
    r = rate()
    lines = ["| method | " + " | ".join(s.name for s in WALKTHROUGH) + " |",
             "|---|" + "---|" * len(WALKTHROUGH)]
    per = [method_forwards(s) for s in WALKTHROUGH]
    for name in per[0]:
        cells = []
        for s, f in zip(WALKTHROUGH, per):
            seconds = f[name] * s.forward() / r
            cells.append(f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rate() -> float:
    """FLOP/s of the fast path measured on the H200 (float32), from results/gpu_lm_check.json."""
    check = json.loads((ROOT / "results" / "gpu_lm_check.json").read_text())
    tiny = SHAPES[0]
    tokens = 16 * 1024  # that check's calibration
    per_token = 2.0 * tiny.weights + 4.0 * 1024 * tiny.hidden * tiny.blocks
    return per_token * tokens / (check["fast_grid_batch_1"]["ms_per_point"] / 1000)


def local(s: Shape, downstream: float) -> float:
    """FLOPs of the local estimator's curves: reference and Gram forwards, the anchors on a
    fraction of the tokens over each unit's downstream share, the closed forms."""
    return s.forward() * (2 + ANCHORS * FRACTION * downstream) + s.closed_forms()


def table() -> str:
    r = rate()
    hours = lambda flops: flops / r / 3600  # noqa: E731
    lines = [f"measured fast-path rate (H200, float32): {r / 1e12:.1f} TFLOP/s; calibration "
             f"{TOKENS:,} tokens; {GRID} grid points", "",
             "| | " + " | ".join(s.name for s in SHAPES) + " |",
             "|---|" + "---|" * len(SHAPES)]
    rows = {
        "prunable weights": [f"{s.weights / 1e9:.2f} G in {7 * s.blocks} linears" for s in SHAPES],
        "one forward of the calibration set": [f"{s.forward() / 1e15:.1f} PFLOP" for s in SHAPES],
        f"exact per-layer curves ({GRID - 1} points)": [
            f"{hours(s.forward() * (GRID - 1) * sum(s.downstream())):,.0f} GPU-h" for s in SHAPES],
        f"exact per-block curves ({GRID - 1} points)": [
            f"{hours(s.forward() * (GRID - 1) * sum(s.downstream()[::7])):,.1f} GPU-h"
            for s in SHAPES],
        f"local per-layer curves (default: {ANCHORS} anchors, {FRACTION:g} of the tokens)": [
            f"{hours(local(s, sum(s.downstream()))):,.2f} GPU-h" for s in SHAPES],
        "local per-block curves": [
            f"{hours(local(s, sum(s.downstream()[::7]))):,.2f} GPU-h" for s in SHAPES],
    }
    for label, cells in rows.items():
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
    print()
    print(method_table())
