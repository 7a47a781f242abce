"""`pc_sampler`: position-aware, frequency-calibrated confidence (PC-Sampler, arXiv
2508.13021; NEUIR/PC-Sampler `src/generate.py`, `generate_with_pc_sampler` and `pc_sampler_function`).

Uncertainty samplers decode a sequence's ends first (a U-shaped order) and prefer trivial, frequent
tokens (punctuation, EOS padding) that the model is sure of. PC-Sampler scores each masked position
of the current block by

    score_i = exp(-λ · i) · min(α, -p_i · log(f(x0_i) + 1e-9))

with i the position's index inside the block (0 at the block's first column), p_i = p(x0_i) the
proposal's probability and f the background frequency of the proposed token in a reference corpus;
the k highest scores are committed, k from LLaDA's linear schedule. λ pulls the order towards
left-to-right (0: none); the calibration -log f rewards informative tokens; α clips it.

`baseline`: a JSON file of token counts in the reference's format, `{"num_token": N,
"p_baseline_dict": {"<token id>": count, ...}}` (NEUIR/PC-Sampler `data/baseline/reference_corpus_*.json`,
counted with the model's tokenizer by its `utils/calculate_p_baseline.py`, whose output key
`token_frequency_dict` is accepted too): f(v) = count_v / N, and 1 / N for a token the file does not
list (the reference's `load_baseline`); a relative path is read from the working directory, else
from the repository root (as suites name `suites/data/...`). The table spans the model's vocabulary (the reference's has
LLaDA's 126464 entries); an id at or past the vocabulary is an error. With no `baseline` (the default,
so the sampler runs on any model) f is uniform, 1 / V: the calibration is the constant log V and the
score reduces to position-weighted confidence, min(α, p log V)·exp(-λi); that is not the paper's
calibrated sampler, which needs the corpus counts of the model's tokenizer.
`scripts/pc_sampler_counts.py` writes such a file for a registered model and task (`token_counts`).

Defaults λ = 0.25 and α = 10 are the reference's command-line defaults (`scripts/eval.py`) and what
its scripts and README recommend for most tasks (`generate_with_pc_sampler`'s own keyword defaults are
1 and 1). Otherwise LLaDA's loop (harness/samplers/_base.py): Gumbel-noise temperature, semi-AR
blocks, guidance and KV caches; the reference runs `block_length` = `steps` = `gen_length` (one block,
one token per step), the harness's defaults.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.paths import guarded
from harness.registry import SAMPLERS
from harness.samplers._base import BlockSampler
from harness.types import HarnessError

REPO = Path(__file__).resolve().parents[2]  # a relative baseline not found from the working directory: from here
_BACKGROUNDS: dict[tuple[str, int], torch.Tensor] = {}  # (resolved path, vocabulary size) -> table


def load_background(path: str | Path, vocab_size: int) -> torch.Tensor:
    """[V] float32 background frequencies from a count file (see the module docstring)."""
    with guarded("read the pc_sampler baseline", path):
        text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise HarnessError(f"pc_sampler baseline {path}: not JSON ({e})") from None
    counts = data.get("p_baseline_dict", data.get("token_frequency_dict")) if isinstance(data, dict) else None
    total = data.get("num_token") if isinstance(data, dict) else None
    if not isinstance(counts, dict) or isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise HarnessError(f"pc_sampler baseline {path}: expected {{\"num_token\": N >= 1, \"p_baseline_dict\": "
                           "{token id: count}}")
    freq = torch.full((vocab_size,), 1.0 / total, dtype=torch.float32)
    ids, values = [], []
    for key, count in counts.items():
        try:
            tid = int(key)
        except ValueError:
            raise HarnessError(f"pc_sampler baseline {path}: token id {key!r} is not an integer") from None
        if not 0 <= tid < vocab_size:
            raise HarnessError(f"pc_sampler baseline {path}: token id {tid} is outside the model's vocabulary "
                               f"of {vocab_size} (a count file of another tokenizer?)")
        if isinstance(count, bool) or not isinstance(count, (int, float)) or count < 0:
            raise HarnessError(f"pc_sampler baseline {path}: count of token {tid} must be a number >= 0, got {count!r}")
        ids.append(tid)
        values.append(count / total)  # python float division, then float32 as the reference's tensor
    if ids:
        freq[torch.tensor(ids)] = torch.tensor(values, dtype=torch.float32)
    return freq


def token_counts(tokenizer, texts, eos_id: int | None = None, canvas: int = 0) -> dict:
    """A count file's content in the reference's format from `texts` (pairs (prompt, completion), or
    strings) tokenized with the model's tokenizer, as `utils/calculate_p_baseline.py` counts a corpus.
    With `eos_id` and `canvas`, each completion is followed by EOS padding up to `canvas` tokens, the
    completion canvas a masked model is trained to fill (its EOS tail is part of what it emits)."""
    counts: dict[int, int] = {}
    total = 0
    for text in texts:
        prompt, completion = text if isinstance(text, tuple) else ("", text)
        ids = list(tokenizer.encode(prompt)) if prompt else []
        done = list(tokenizer.encode(completion))
        if eos_id is not None and canvas > len(done):
            done += [int(eos_id)] * (canvas - len(done))
        for t in ids + done:
            counts[int(t)] = counts.get(int(t), 0) + 1
        total += len(ids) + len(done)
    return {"num_token": total, "p_baseline_dict": {str(k): v for k, v in sorted(counts.items())}}


def pc_scores(p: torch.Tensor, x0: torch.Tensor, freq: torch.Tensor, lambd: float, alpha: float) -> torch.Tensor:
    """[B, n] proposal probabilities and tokens of one block, [V] background -> [B, n] PC-Sampler scores
    (position 0 = the block's first column)."""
    calibrated = torch.clamp(-p * torch.log(freq.to(p.device)[x0] + 1e-9), max=alpha)
    positions = torch.arange(p.shape[1], device=p.device, dtype=torch.float32)
    return torch.exp(-lambd * positions) * calibrated


@SAMPLERS.register("pc_sampler")
@dataclass(frozen=True, kw_only=True)
class PCSampler(BlockSampler):
    """PC-Sampler: confidence calibrated by background token frequency and weighted by exp(-λ·position in block)."""

    lambd: float = 0.25  # positional decay λ (0: no positional bias)
    alpha: float = 10.0  # clip of the calibrated confidence
    baseline: str | None = None  # token-count JSON of a reference corpus; None: uniform background

    def __post_init__(self):
        super().__post_init__()
        if not math.isfinite(self.lambd) or self.lambd < 0:
            raise ValueError(f"lambd must be a finite number >= 0, got {self.lambd}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")

    def background(self, vocab_size: int) -> torch.Tensor:
        """[V] f(v): the baseline file's frequencies (read once per file and vocabulary size), else uniform."""
        if self.baseline is None:
            return torch.full((vocab_size,), 1.0 / vocab_size)
        path = Path(self.baseline).expanduser()
        if not path.is_absolute() and not path.exists() and (REPO / path).exists():
            path = REPO / path  # a suite's relative path, run from another directory
        key = (str(path.resolve()), vocab_size)
        if key not in _BACKGROUNDS:
            _BACKGROUNDS[key] = load_background(path, vocab_size)
        return _BACKGROUNDS[key]

    def confidence(self, probs, x0, generator=None):
        p = torch.gather(probs, -1, x0[..., None]).squeeze(-1)  # [B, n] p(x0)
        return pc_scores(p.float(), x0, self.background(probs.shape[-1]), self.lambd, self.alpha)
