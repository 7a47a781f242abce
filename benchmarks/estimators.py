"""Time every likelihood estimator against the bare forward passes it needs.

For each estimator, on the default tiny checkpoint and a batch of `addition` items (n_digits 3,
reference completions), at a fixed NFE per sequence:
  (a) the estimator call under torch.no_grad (drawing its masks, scoring, combining), and
  (b) the bare forward passes it needs: the very [rows, T] inputs (and attention masks) it pushed
      through `denoiser.logits`, in the same chunks, recorded beforehand and replayed, so (b) is
      model time only.
(a) and (b) are interleaved in pairs after a warm-up; the ratio is the median over `--repeats`
pairs of (a) / (b), each pair timed back to back (robust to load drift on a shared machine).
Target (the issue): estimator / bare forward <= 1.10. The meter's NFE of each call is checked
against the estimator's `nfe_for_batch` (exact: Σ 2^n_b − 1; trace: one pass per commit group).

Estimators with one pass per sequence (uni_elbo) or a fixed number of passes (trace: one per
committed token) score `copies` replicas of each item, so that every row of the table pushes about
NFE × batch sequences through the model. Per-row generators, as the runner uses them.

    python benchmarks/estimators.py            # NFE 16 per sequence, batch 32, 2 threads
    python benchmarks/estimators.py --quick    # NFE 8, batch 16, fewer repeats (a smoke run)
    python benchmarks/estimators.py --exact    # exact moments: 12 items, L = 12, target <= 5 min

`--exact` times harness/estimators/moments: every registered masked estimator at the NFE points of
suites/estimators.yaml on 12 items of 12 scored tokens (a random tiny model with the tiny-addition
checkpoint's architecture, widened to 20 positions: the checkpoint itself holds 13), the forward
passes cached once per item (4095 per item) and reused by every configuration. SPG with prompt
masking would need 2^8 x 4095 passes per item (refused above 2^16), so SPG runs at p_prompt 0.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from harness.budget import Meter
from harness.registry import ESTIMATORS, MODELS, TASKS
from harness.text import completion_mask, encode_completions, encode_prompts

TARGET = 1.10


class Recorder:
    """A denoiser that forwards to `inner` and keeps a copy of every (x, attention_mask) it sees."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def logits(self, x, attention_mask=None):
        self.calls.append((x.clone(), None if attention_mask is None else attention_mask.clone()))
        return self.inner.logits(x, attention_mask)


class Timer:
    """A denoiser that forwards to `inner` and adds up the wall time spent inside `logits`."""

    def __init__(self, inner):
        self.inner = inner
        self.model_s = 0.0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def logits(self, x, attention_mask=None):
        start = time.perf_counter()
        out = self.inner.logits(x, attention_mask)
        self.model_s += time.perf_counter() - start
        return out


def specs(nfe: int) -> list[tuple[str, str, dict, str]]:
    """(label, registered name, params, how many copies of each item) at `nfe` passes per sequence."""
    out = [(f"mc_elbo[{law}]", "mc_elbo", {"n_mc": nfe, "t_law": law}, "1")
           for law in ("iid", "stratified", "antithetic", "count")]
    out += [
        ("one_step", "one_step", {"n_mc": nfe}, "1"),
        ("coupled", "coupled", {"n_mc": max(1, (nfe - 1) // 2)}, "1"),  # 2·n_mc + 1 (full pass)
        ("uni_elbo", "uni_elbo", {}, "nfe"),  # one pass per sequence: nfe copies of each item
        ("quadrature_elbo[count]", "quadrature_elbo", {"n_nodes": 2, "k_masks": max(1, nfe // 2)}, "1"),
        ("quadrature_elbo[bernoulli]", "quadrature_elbo",
         {"n_nodes": 2, "k_masks": max(1, nfe // 2), "mask_law": "bernoulli"}, "1"),
        ("complementary_elbo", "complementary_elbo", {"n_mc": max(1, nfe // 2)}, "1"),
        ("block_elbo", "block_elbo", {"m": nfe}, "1"),
        ("eubo", "eubo", {"m": nfe}, "1"),
        ("mix", "mix", {"m": nfe}, "1"),
        ("trace", "trace", {}, "trace"),  # one pass per committed token: copies to reach ~nfe
        ("exact", "exact", {}, "1"),  # 2^n − 1 passes per sequence, whatever nfe says
    ]
    return out


def expected_nfe(name: str, est, cmask: torch.Tensor) -> int:
    if hasattr(est, "nfe_for_batch"):
        return est.nfe_for_batch(cmask.shape[0])
    n_b = cmask.sum(1)
    if name == "exact":
        return int(sum((1 << int(n)) - 1 for n in n_b))
    if name == "trace":  # stride 1, a permutation: one group per scored token
        return int(n_b.sum())
    raise ValueError(name)


def median_ms(ts: list[float]) -> float:
    return 1e3 * statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="NFE 8, batch 16, 3 repeats (a smoke run)")
    ap.add_argument("--nfe", type=int, default=None, help="passes per sequence (default 16; quick 8)")
    ap.add_argument("--batch", type=int, default=None, help="items per call (default 32; quick 16)")
    ap.add_argument("--repeats", type=int, default=None, help="timed pairs (default 11; quick 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated labels or names to run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exact", action="store_true", help="time exact moments instead")
    args = ap.parse_args()
    if args.exact:
        torch.set_num_threads(args.threads)
        return exact_bench(n_items=6 if args.quick else 12)
    nfe = args.nfe or (8 if args.quick else 16)
    B = args.batch or (16 if args.quick else 32)
    repeats = args.repeats or (3 if args.quick else 11)
    torch.set_num_threads(args.threads)

    model = MODELS.build("tiny", {})  # the default checkpoint
    den = model.load()
    tok = den.tokenizer
    task = TASKS.build("addition", {"n_digits": 3})
    items = task.items("test")[:B]
    prompt, pmask = encode_prompts(tok, [it.prompt for it in items], den.pad_id)  # [B, P]
    completion = encode_completions(tok, [it.reference for it in items], task.gen_length, den.eos_id)  # [B, L]
    cmask = completion_mask(completion, den.eos_id)  # [B, L]
    P, L = prompt.shape[1], completion.shape[1]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {den.device}; "
          f"tiny checkpoint {model.checkpoint}; addition n_digits 3: batch {B}, P={P}, "
          f"L={L} (scored {cmask.sum(1).float().mean():.2f} on average), NFE {nfe}/sequence, "
          f"{repeats} timed pairs")

    wanted = None if args.only is None else set(args.only.split(","))
    rows = []
    for label, name, params, copies_rule in specs(nfe):
        if wanted is not None and label not in wanted and name not in wanted:
            continue
        est = ESTIMATORS.build(name, params)
        mean_scored = float(cmask.sum(1).float().mean())
        copies = {"1": 1, "nfe": nfe, "trace": max(1, round(nfe / mean_scored))}[copies_rule]
        rep = lambda t: t.repeat_interleave(copies, 0)  # noqa: E731
        pr, pm, co, cm = rep(prompt), rep(pmask), rep(completion), rep(cmask)
        n_seq = pr.shape[0]
        g = torch.Generator().manual_seed(args.seed)
        draws = None
        if name == "trace":  # commit steps: a random permutation of the canvas per row
            draws = {"commit_step": torch.stack([torch.randperm(L, generator=g) for _ in range(n_seq)])}
        seeds = torch.randint(0, 2**62, (n_seq,), generator=g).tolist()

        def call(denoiser):
            """-> (seconds of the call, of which seconds outside the model)."""
            gens = [torch.Generator().manual_seed(s) for s in seeds]  # built outside the timed part
            timer = Timer(denoiser)
            start = time.perf_counter()
            est(timer, pr, co, cm, generator=gens, prompt_mask=pm, draws=draws)
            total = time.perf_counter() - start
            return total, total - timer.model_s

        def bare(inputs):
            start = time.perf_counter()
            for x, a in inputs:
                den.logits(x, a)
            return time.perf_counter() - start

        with torch.no_grad():
            rec = Recorder(den)
            meter = Meter(rec)
            call(meter)  # the checked call: NFE, and the inputs of every pass
            want = expected_nfe(name, est, cm)
            got = meter.cost.nfe
            assert got == want, f"{label}: meter NFE {got} != expected {want}"
            inputs = rec.calls
            call(den), bare(inputs)  # warm-up
            ta, to, tb = [], [], []
            for r in range(repeats):  # interleaved in pairs, alternating which goes first
                if r % 2:
                    tb.append(bare(inputs))
                total, outside = call(den)
                ta.append(total)
                to.append(outside)
                if r % 2 == 0:
                    tb.append(bare(inputs))
        # The ratio is the median of the paired ratios (each estimator call over the bare passes
        # timed right next to it): on a shared machine that cancels most of the load drift.
        pairs = sorted(a / b for a, b in zip(ta, tb))
        ratio = statistics.median(pairs)
        in_call = statistics.median(a / (a - o) for a, o in zip(ta, to))  # est / its own model time
        q1, q3 = pairs[len(pairs) // 4], pairs[(3 * len(pairs)) // 4]
        noisy = max(tb) > 1.5 * min(tb)
        row = dict(label=label, seqs=n_seq, per=got / n_seq, nfe=got, chunks=len(inputs),
                   est=median_ms(ta), fwd=median_ms(tb), out=median_ms(to), ratio=ratio,
                   in_call=in_call, ok=ratio <= TARGET, noisy=noisy)
        rows.append(row)
        print(f"  {label}: meter NFE {got} = expected {want}; est {row['est']:.1f} ms (outside the "
              f"model {row['out']:.1f}), bare forward {row['fwd']:.1f} ms, ratio {ratio:.3f} "
              f"(paired, IQR {q1:.3f}-{q3:.3f}){'; noisy: forward times vary > 1.5x' if noisy else ''}",
              flush=True)

    print()
    head = (f"{'estimator':27s} {'seqs':>4s} {'NFE/seq':>7s} {'passes':>6s} {'chunks':>6s} "
            f"{'est ms':>8s} {'fwd ms':>8s} {'outside':>7s} {'in-call':>7s} {'ratio':>6s}  <= {TARGET:.2f}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['label']:27s} {r['seqs']:4d} {r['per']:7.2f} {r['nfe']:6d} {r['chunks']:6d} "
              f"{r['est']:8.1f} {r['fwd']:8.1f} {r['out']:7.1f} {r['in_call']:7.3f} {r['ratio']:6.3f}  "
              f"{'yes' if r['ok'] else 'NO'}{' (noisy)' if r['noisy'] else ''}")
    print("est ms, fwd ms: medians of the estimator call and of its bare forward passes; outside: "
          "median time of the call spent outside denoiser.logits; in-call: est / (est - outside); "
          "ratio: median of paired est / fwd.")
    n_ok = sum(r["ok"] for r in rows)
    worst = max(rows, key=lambda r: r["ratio"]) if rows else None
    print(f"{n_ok}/{len(rows)} estimators within {TARGET:.2f}x of their bare forward passes"
          + (f" (worst: {worst['label']} {worst['ratio']:.3f})" if worst else "")
          + (f"; {sum(r['noisy'] for r in rows)} rows noisy (a shared machine? rerun)"
             if any(r["noisy"] for r in rows) else ""))
    if not all(math.isfinite(r["ratio"]) for r in rows):
        raise SystemExit("non-finite timing")


SWEEP = [1, 2, 4, 8, 16, 32, 64, 128]


def exact_specs() -> list[tuple[str, str, dict, dict]]:
    """(label, name, params, study options) of every masked estimator at the suite's sweep points."""
    out = [(f"mc_elbo[{law}]", "mc_elbo", {"t_law": law, "n_mc": n}, {})
           for law in ("iid", "stratified", "antithetic", "count") for n in SWEEP]
    out += [("coupled[elbo]", "coupled", {"include_full": False, "scale": "elbo", "n_mc": n}, {}) for n in SWEEP[:-1]]
    out += [("coupled[paper]", "coupled", {}, {})]
    out += [("one_step", "one_step", {"p_prompt": 0.15, "n_mc": n}, {}) for n in SWEEP]
    out += [("uni_elbo", "uni_elbo", {}, {})]
    out += [("quadrature[bernoulli]", "quadrature_elbo", {"mask_law": "bernoulli", "k_masks": k}, {})
            for k in SWEEP[:-1]]
    out += [("quadrature[count]", "quadrature_elbo", {"mask_law": "count", "k_masks": k}, {}) for k in (1, 2)]
    out += [("complementary_elbo", "complementary_elbo", {"n_mc": n}, {}) for n in SWEEP[:-1]]
    out += [("block_elbo[p_prompt 0]", "block_elbo", {"m": m, "p_prompt": 0.0}, {}) for m in SWEEP]
    out += [(f"{n}[p_prompt 0]", n, {"m": 1, "p_prompt": 0.0}, {}) for n in ("eubo", "mix")]
    out += [("trace[random order]", "trace", {}, {"commit_order": "random"})]
    out += [(f"exact[{t}]", "exact", {"target": t}, {}) for t in ("elbo", "log_p")]
    return out


def exact_bench(n_items: int = 12, L: int = 12, target_s: float = 300.0) -> None:
    from harness.estimators.moments import clear_cache, exact_moments, item_table
    from harness.models.tiny import TinyConfig, TinyDenoiser, TinyMDLM, load_checkpoint, resolve_checkpoint

    _, tok, config = load_checkpoint(resolve_checkpoint("tiny-addition"))
    cfg = TinyConfig(**{**config["model"], "max_len": 8 + L})
    den = TinyDenoiser(TinyMDLM(cfg, generator=torch.Generator().manual_seed(0)).eval(), tok)
    task = TASKS.build("addition", {"n_digits": 3})
    items = task.items("test")[:n_items]
    prompt, pmask = encode_prompts(tok, [it.prompt for it in items], den.pad_id)  # [B, 8]
    # completions of exactly L scored tokens: the reference digits repeated, then EOS
    texts = [(it.reference * L)[: L - 1] for it in items]
    completion = encode_completions(tok, texts, L, den.eos_id)  # [B, L]
    cmask = completion_mask(completion, den.eos_id)
    assert int(cmask.sum(1).min()) == L, "every item should score L tokens"
    specs = exact_specs()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; {n_items} items, P={prompt.shape[1]}, "
          f"L={L} scored tokens ({(1 << L) - 1} reveal-set passes per item); {len(specs)} estimator configurations")
    clear_cache()
    start, cpu0 = time.perf_counter(), time.process_time()
    per_label: dict[str, float] = {}
    meter = Meter(den)
    for b in range(n_items):
        t0 = time.perf_counter()
        tab = item_table(meter, prompt[b], pmask[b], completion[b], cmask[b], max_tokens=8192)
        per_label["table (forward passes)"] = per_label.get("table (forward passes)", 0.0) + time.perf_counter() - t0
        for label, name, params, options in specs:
            t0 = time.perf_counter()
            exact_moments(ESTIMATORS.build(name, params), tab, options)
            per_label[label] = per_label.get(label, 0.0) + time.perf_counter() - t0
        print(f"  item {b + 1}/{n_items}: {time.perf_counter() - start:.1f} s wall, "
              f"{time.process_time() - cpu0:.1f} s CPU so far", flush=True)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu0
    for label, sec in per_label.items():
        print(f"  {label:28s} {sec:8.2f} s")
    print(f"meter: {meter.cost.nfe:.0f} forward passes in all ({meter.cost.nfe / n_items:.0f} per item: the "
          f"reveal sets once, plus one_step's 2^8 prompt subsets)")
    print(f"exact moments of {len(specs)} configurations on {n_items} items: {total:.1f} s wall, {cpu:.1f} s CPU "
          f"over {torch.get_num_threads()} threads (target <= {target_s:.0f} s wall on 2 free cores): "
          f"{'yes' if total <= target_s else 'NO'}{'' if cpu < 1.5 * total else ''}")


if __name__ == "__main__":
    main()
