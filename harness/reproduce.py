"""`dlm-harness reproduce`: published numbers as data, planned, run, or re-scored under the paper's protocol.

A reproduction is one YAML file under `reproductions/`, one published table. Each row holds what
decides its number: the checkpoint, the task, the protocol (scoring, shots, chat template, prompt
template, prefill, how the checkpoint was chosen, the evaluation set, responses averaged per item), every
decoding setting, the published value and where it was published. A row
says what it runs as in the harness (`harness.task`, `decoding.sampler` and the sampler's own
parameter names), and what the harness cannot express (`missing`), what the source never states
(`unstated`), or how a runnable row knowingly differs from the source's run in a way that can move
the number (`differs`: printed with the row's status and beside its result); nothing is approximated
silently:

- a decoding key that is not a parameter of the named sampler, a sampler, task or model family that
  is not registered, a protocol setting that is a model option the family lacks (`MODEL_OPTIONS`:
  the chat template, encoding with the tokenizer's special tokens), or a row without a harness task,
  is added to `missing` when the file is read;
- a row with anything missing is listed, planned and can score published generations, but is not
  run (running it would measure something else under the paper's name).

`--list` shows every row and its status; `--dry-run` plans rows on any machine (items, forward
passes per sequence, an estimated GPU time from the table's declared throughput, stated as an
estimate with its assumptions); `--generations FILE` scores a file of generations with
`harness.score.score_file` under the row's protocol (d1's JSON, lm-eval samples, JSONL); otherwise
the runnable rows become one suite (one study per row) run by the ordinary runner.
The report sets the published value beside the measured one with its 95% interval (Wilson,
`harness.stats.intervals`), the difference with Newcombe's hybrid score interval for two independent
proportions (Newcombe 1998, method 10; the published value is read as a proportion over the source's
evaluation set of `items` items), whether that interval excludes zero, and the protocol.
"""
from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness import validate
from harness.types import HarnessError

ROOT = Path(__file__).resolve().parents[1] / "reproductions"
TABLE_KEYS = {"table", "title", "source", "model", "family", "throughput", "defaults", "rows", "notes"}
ROW_KEYS = {"id", "model", "family", "task", "variant", "harness", "protocol", "decoding", "source_args", "items",
            "published", "source", "missing", "unstated", "differs", "notes"}
PROTOCOL_KEYS = {"scoring", "shots", "chat_template", "add_special_tokens", "prompt_template", "prefill", "filter",
                 "harness_protocol", "checkpoint", "test_set", "samples"}
# protocol settings that are model options (harness/prompting.py): protocol key -> the model field. `chat_template`:
# wrap the prompt as one user turn; `add_special_tokens`: encode the text as `tokenizer(text)` does (after the
# chat template: LLaDA's two BOS tokens). null: not stated (the model's default).
MODEL_OPTIONS = {"chat_template": "chat", "add_special_tokens": "add_special_tokens"}
PUBLISHED_KEYS = {"value", "metric", "scale", "tokens_per_s", "speedup", "speedup_over", "tpf"}
SOURCE_KEYS = {"paper", "where", "url", "kind", "quote"}
THROUGHPUT_KEYS = {"tokens_per_s", "device", "basis"}
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
CHARS_PER_TOKEN = 4.0  # the prompt-length assumption of --dry-run when the task's prompts are at hand


@dataclass
class Row:
    table: str
    id: str
    model: str
    family: str
    task: str
    protocol: dict
    decoding: dict
    published: dict
    source: dict
    items: int | None
    harness_task: dict | None
    missing: list[str] = field(default_factory=list)
    unstated: list[str] = field(default_factory=list)
    differs: list[str] = field(default_factory=list)  # known, declared differences of a runnable row from the source
    variant: str = ""
    source_args: str = ""
    notes: str = ""

    @property
    def key(self) -> str:
        return f"{self.table}/{self.id}"

    @property
    def runnable(self) -> bool:
        return not self.missing

    def status(self) -> str:
        if self.missing:
            return "missing: " + "; ".join(self.missing)
        out = "runnable" + (f" (unstated in the source: {'; '.join(self.unstated)})" if self.unstated else "")
        return out + (f"; differs from the source: {'; '.join(self.differs)}" if self.differs else "")


@dataclass
class Table:
    name: str
    title: str
    path: Path
    source: dict
    throughput: dict | None
    rows: list[Row]
    notes: str = ""


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _keys(d, allowed: set, where: str, required: tuple = ()) -> dict:
    if not isinstance(d, dict):
        raise HarnessError(f"{where}: expected a mapping, got {type(d).__name__}")
    extra = sorted(set(d) - allowed)
    if extra:
        raise HarnessError(f"{where}: unknown key {extra[0]!r} (allowed: {', '.join(sorted(allowed))})")
    for k in required:
        if d.get(k) in (None, ""):
            raise HarnessError(f"{where}: key {k!r} is required")
    return d


def _source(d, where: str) -> dict:
    _keys(d, SOURCE_KEYS, where, ("where",))
    if d.get("kind", "primary") not in ("primary", "secondary"):
        raise HarnessError(f"{where}.kind: expected 'primary' or 'secondary', got {validate.show(d.get('kind'))}")
    return d


def _protocol(p, where: str) -> dict:
    """The scoring protocol: model options (MODEL_OPTIONS) are true, false or null; `prefill` a string;
    `checkpoint` (how the source chose the evaluated checkpoint) and `test_set` (the evaluation set as the
    source defines it) are sentences; `samples` the responses per item the published
    value averages (TraceRL averages 3), an integer >= 1."""
    _keys(p, PROTOCOL_KEYS, where, ("scoring",))
    for k in MODEL_OPTIONS:
        if p.get(k) is not None and not isinstance(p[k], bool):
            raise HarnessError(f"{where}.{k}: expected true, false or null, got {validate.show(p[k])}")
    if not isinstance(p.get("prefill") or "", str):
        raise HarnessError(f"{where}.prefill: expected a string, got {validate.show(p['prefill'])}")
    n = p.get("samples")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise HarnessError(f"{where}.samples: expected an integer >= 1 (responses averaged per item), got {n!r}")
    for k in ("checkpoint", "test_set"):
        if k in p and (not isinstance(p[k], str) or not p[k].strip()):
            raise HarnessError(f"{where}.{k}: expected a sentence, got {validate.show(p[k])}")
    return p


def load_table(path: Path, index: dict | None = None) -> Table:
    """Read and validate one reproduction file; HarnessError names the file, row and key."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise HarnessError(f"{path}: cannot read ({exc.strerror or exc})") from None
    data = validate.load_yaml(raw, str(path))
    where = str(path)
    _keys(data, TABLE_KEYS, where, ("table", "title", "source", "rows"))
    name = str(data["table"])
    if not NAME.match(name) or name != path.stem:
        raise HarnessError(f"{where}.table: expected the file's stem {path.stem!r} (letters, digits, _ . -), "
                           f"got {name!r}")
    _source(data["source"], f"{where}.source")
    thr = data.get("throughput")
    if thr is not None:
        _keys(thr, THROUGHPUT_KEYS, f"{where}.throughput", ("tokens_per_s", "device", "basis"))
        if not isinstance(thr["tokens_per_s"], (int, float)) or thr["tokens_per_s"] <= 0:
            raise HarnessError(f"{where}.throughput.tokens_per_s: expected a number > 0, "
                               f"got {validate.show(thr['tokens_per_s'])}")
    defaults = data.get("defaults") or {}
    _keys(defaults, ROW_KEYS - {"id", "published"}, f"{where}.defaults")
    if not isinstance(data["rows"], list) or not data["rows"]:
        raise HarnessError(f"{where}.rows: expected a non-empty list of rows")
    rows, seen = [], set()
    for i, raw_row in enumerate(data["rows"]):
        rw = f"{where}: rows[{i}]"
        if isinstance(raw_row, dict) and raw_row.get("id"):
            rw = f"{where}: row {raw_row['id']!r}"
        _keys(raw_row, ROW_KEYS, rw, ("id",))
        r = _merge({"model": data.get("model"), "family": data.get("family"), "source": data["source"], **defaults},
                   raw_row)
        rid = str(r["id"])
        if not NAME.match(rid) or rid in seen:
            raise HarnessError(f"{rw}.id: expected a unique name of letters, digits, _ . -, got {rid!r}")
        seen.add(rid)
        rows.append(_row(name, r, rw, index))
    return Table(name, str(data["title"]), path, data["source"], thr, rows, str(data.get("notes") or ""))


def _row(table: str, r: dict, where: str, index: dict | None) -> Row:
    for k in ("model", "family", "task", "published", "protocol", "decoding"):
        if r.get(k) in (None, ""):
            raise HarnessError(f"{where}: key {k!r} is required (in the row or the table's defaults)")
    _protocol(r["protocol"], f"{where}.protocol")
    pub = _keys(r["published"], PUBLISHED_KEYS, f"{where}.published", ("value", "metric"))
    if not isinstance(pub["value"], (int, float)) or isinstance(pub["value"], bool) or not math.isfinite(pub["value"]):
        raise HarnessError(f"{where}.published.value: expected a number, got {validate.show(pub['value'])}")
    if pub.get("scale", 100) not in (1, 100):
        raise HarnessError(f"{where}.published.scale: expected 100 (a percentage) or 1, got {pub['scale']!r}")
    if not 0 <= pub["value"] <= pub.get("scale", 100):
        raise HarnessError(f"{where}.published.value: {pub['value']} is outside [0, {pub.get('scale', 100)}]")
    _source(r["source"], f"{where}.source")
    dec = r["decoding"]
    if not isinstance(dec, dict) or bool(dec.get("sampler")) == bool(dec.get("estimator")):
        raise HarnessError(f"{where}.decoding: expected a mapping with 'sampler' (a registered sampler, for "
                           "generation rows) or 'estimator' (for likelihood rows), and its parameters")
    items = r.get("items")
    if items is not None and (not isinstance(items, int) or isinstance(items, bool) or items < 1):
        raise HarnessError(f"{where}.items: expected an integer >= 1 (the source's evaluation set), got {items!r}")
    for k in ("missing", "unstated", "differs"):
        if not isinstance(r.get(k) or [], list) or not all(isinstance(x, str) for x in r.get(k) or []):
            raise HarnessError(f"{where}.{k}: expected a list of sentences")
    ht = r.get("harness")
    if ht is not None:
        _keys(ht, {"task"}, f"{where}.harness", ("task",))
        ht = _keys(ht["task"], {"name", "params"}, f"{where}.harness.task", ("name",))
    row = Row(table=table, id=str(r["id"]), model=str(r["model"]), family=str(r["family"]), task=str(r["task"]),
              protocol=r["protocol"], decoding=dict(dec), published=pub, source=r["source"], items=items,
              harness_task=ht, missing=list(r.get("missing") or []), unstated=list(r.get("unstated") or []),
              differs=list(r.get("differs") or []),
              variant=str(r.get("variant") or ""), source_args=str(r.get("source_args") or ""),
              notes=str(r.get("notes") or ""))
    if index is not None:
        _expressible(row, index)
    return row


def _expressible(row: Row, index: dict) -> None:
    """Add to `row.missing` what the registries cannot express (names, parameters), from the component
    index (`cli.component_index`: read from a cache, nothing heavy imported)."""
    def params(kind: str, name: str) -> set | None:
        e = index.get(kind, {}).get(name)
        return None if e is None else {f[0] for f in e["fields"]}

    fam = params("models", row.family)
    if fam is None:
        row.missing.append(f"model family {row.family!r} is not registered")
    else:
        for key, option in MODEL_OPTIONS.items():
            if row.protocol.get(key) is not None and option not in fam:
                row.missing.append(f"protocol {key}={row.protocol[key]!r}: model family {row.family} has no option "
                                   f"{option}")
    if row.harness_task is None:
        row.missing.append(f"task {row.task!r} has no harness task")
    else:
        tp = params("tasks", row.harness_task["name"])
        if tp is None:
            row.missing.append(f"harness task {row.harness_task['name']!r} is not registered")
        else:
            for k in (row.harness_task.get("params") or {}):
                if k not in tp:
                    row.missing.append(f"task parameter {row.harness_task['name']}.{k} does not exist")
    kind = "sampler" if row.decoding.get("sampler") else "estimator"
    name = row.decoding[kind]
    sp = params(kind + "s", name)
    if sp is None:
        row.missing.append(f"{kind} {name!r} is not registered")
    else:
        for k, v in row.decoding.items():
            if k != kind and k not in sp:
                row.missing.append(f"decoding {k}={v!r}: {kind} {name} has no such parameter")
    if kind == "estimator":
        row.missing.append("runner: likelihood rows run through `dlm-harness eval` (the lm-eval bridge); "
                           "reproduce runs generation rows only")


def tables(root: Path | None = None, index: dict | None = None) -> list[Table]:
    """Every reproduction file under `root` (default: the repository's `reproductions/`). With `index`
    (`harness.cli.component_index()`: {kind: {name: {"fields": ...}}}), what the registries cannot
    express is added to each row's `missing`."""
    root = Path(root) if root else ROOT
    if not root.is_dir():
        raise HarnessError(f"{root}: no reproductions directory")
    return [load_table(p, index) for p in sorted(root.glob("*.yaml"))]


def find(name: str, root: Path | None = None, index: dict | None = None) -> Table:
    ts = tables(root, index)
    by = {t.name: t for t in ts}
    if name not in by:
        from harness.registry import _suggest

        raise HarnessError(f"reproduce {name!r}: no such table{_suggest(name, sorted(by))} "
                           f"(known: {', '.join(sorted(by))})")
    return by[name]


def select(table: Table, rows: list[str] | None) -> list[Row]:
    if not rows:
        return list(table.rows)
    by = {r.id: r for r in table.rows}
    out = []
    for rid in rows:
        if rid not in by:
            from harness.registry import _suggest

            raise HarnessError(f"reproduce {table.name} --rows {rid!r}: no such row{_suggest(rid, sorted(by))} "
                               f"(rows: {', '.join(by)})")
        out.append(by[rid])
    return out


# -- listing ------------------------------------------------------------------------------------------


def _src(s: dict) -> str:
    text = f"{s.get('paper', '')}: {s['where']}".strip(": ")
    return text + (" [secondary]" if s.get("kind") == "secondary" else "")


def _pub(r: Row) -> str:
    p = r.published
    text = f"{p['value']:g}{'%' if p.get('scale', 100) == 100 else ''} {p['metric']}"
    if p.get("tokens_per_s") is not None:
        text += f", {p['tokens_per_s']:g} tok/s"
    if p.get("speedup") is not None:
        text += f" ({p['speedup']:g}x)"
    return text


def _table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns; the last one runs free."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(("".join(c.ljust(w + 2) for c, w in zip(r, widths)) + r[-1]).rstrip() for r in rows)


def list_text(ts: list[Table]) -> str:
    out, n, sources = [], 0, set()
    for t in ts:
        out.append(f"{t.name}: {t.title}  ({_src(t.source)})")
        rows = [("  row", "model", "task", "published", "source", "status")]
        for r in t.rows:
            rows.append((f"  {r.id}", r.model, r.task + (f" [{r.variant}]" if r.variant else ""), _pub(r),
                         r.source["where"] + (" [secondary]" if r.source.get("kind") == "secondary" else ""),
                         r.status()))
            n += 1
            sources.add((r.source.get("paper", ""), r.source["where"]))
        out.append(_table(rows))
        out.append("")
    runnable = sum(r.runnable for t in ts for r in t.rows)
    differs = sum(r.runnable and bool(r.differs) for t in ts for r in t.rows)
    docs = {where.split(", ")[0] for _, where in sources}  # a file or paper, before its table's name
    out.append(f"{n} published rows in {len(ts)} tables from {len(sources)} published tables in {len(docs)} "
               f"documents; {runnable} runnable as written ({differs} of them with a declared difference from "
               "the source's run), the others list what is missing")
    return "\n".join(out)


# -- planning -----------------------------------------------------------------------------------------


def forward_passes(r: Row) -> tuple[float, float, str]:
    """(lowest, highest) forward passes per sequence of the row's decoding, and how they follow."""
    d = r.decoding
    if "estimator" in d:
        return math.nan, math.nan, "a likelihood row: Monte Carlo passes per choice, not a decoding"
    gen = d.get("gen_length")
    cfg = 2 if (d.get("cfg_scale") or 0) > 0 else 1
    if gen is None:
        return math.nan, math.nan, "gen_length not set in the row: the task's default"
    if "steps" in d or d["sampler"] in ("low_confidence", "random_order", "margin", "entropy"):
        steps = d.get("steps") or gen
        blocks = max(1, gen // (d.get("block_length") or gen))
        steps = max(steps, blocks)
        return cfg * steps, cfg * steps, f"{steps} steps" + (" x2 (CFG)" if cfg == 2 else "")
    if "tau" in d or "bound" in d:  # adaptive: at least one pass per block, at most one per token
        cap = d.get("max_steps") or gen
        blocks = max(1, gen // (d.get("block_length") or gen))
        return cfg * blocks, cfg * cap, f"adaptive: between {blocks} (one per block) and {cap} (one per token)"
    return math.nan, math.nan, f"sampler {d['sampler']}: no closed form"


def _prompt_tokens(r: Row) -> tuple[float | None, str]:
    """Mean prompt length in tokens of the row's first prompts, when the task's data are at hand."""
    if r.harness_task is None:
        return None, "no harness task"
    try:
        from harness.registry import TASKS

        task = TASKS.build(r.harness_task["name"], dict(r.harness_task.get("params") or {}))
        items = task.items("test")[:16]
    except (HarnessError, OSError, ValueError, KeyError) as exc:
        return None, f"task data not at hand ({str(exc).splitlines()[0][:80]})"
    if not items:
        return None, "no items"
    chars = sum(len(it.prompt) for it in items) / len(items)
    return chars / CHARS_PER_TOKEN, f"mean of the first {len(items)} prompts at {CHARS_PER_TOKEN:g} characters a token"


def plan_rows(table: Table, rows: list[Row]) -> list[dict]:
    out = []
    for r in rows:
        lo, hi, how = forward_passes(r)
        prompt, why = _prompt_tokens(r)
        gen = r.decoding.get("gen_length") or 0
        canvas = (prompt or 0) + gen
        est = per = None
        thr = table.throughput
        if thr and not math.isnan(hi):
            per = (lo * canvas / thr["tokens_per_s"], hi * canvas / thr["tokens_per_s"])
            if r.items:
                est = (r.items * per[0], r.items * per[1])
        out.append({"row": r.id, "items": r.items, "nfe_lo": lo, "nfe_hi": hi, "nfe_how": how,
                    "prompt_tokens": prompt, "prompt_how": why, "canvas": canvas, "per_item_s": per, "gpu_s": est,
                    "status": r.status()})
    return out


def _dur(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def plan_text(table: Table, plan: list[dict]) -> str:
    thr = table.throughput
    lines = [f"reproduce {table.name}: plan of {len(plan)} rows (nothing run)"]
    if thr:
        lines.append(f"GPU time is an ESTIMATE: items x forward passes x canvas tokens / {thr['tokens_per_s']:g} "
                     f"tokens/s, the declared throughput of one forward on {thr['device']} ({thr['basis']}); "
                     "full-canvas passes (a KV cache makes its passes cheaper, so cached rows are over-estimated); "
                     "canvas = prompt tokens + gen_length, the prompt part 0 where the task's data are not at hand.")
    else:
        lines.append("no throughput declared for this table: no GPU estimate")
    rows = [("row", "items", "NFE/seq", "canvas", "GPU s/item (est.)", "GPU time (est.)", "status")]
    total = [0.0, 0.0]
    for p in plan:
        nfe = "?" if math.isnan(p["nfe_hi"]) else (f"{p['nfe_lo']:g}" if p["nfe_lo"] == p["nfe_hi"]
                                                     else f"{p['nfe_lo']:g}-{p['nfe_hi']:g}")
        gpu, per = "-", "-"
        if p["per_item_s"]:
            lo, hi = p["per_item_s"]
            per = f"{hi:.2f}" if lo == hi else f"{lo:.2f}-{hi:.2f}"
        if p["gpu_s"]:
            lo, hi = p["gpu_s"]
            gpu = _dur(hi) if lo == hi else f"{_dur(lo)} - {_dur(hi)}"
            total[0] += lo
            total[1] += hi
        rows.append((p["row"], str(p["items"] or "?"), nfe, f"{p['canvas']:.0f}", per, gpu, p["status"]))
    lines.append(_table(rows))
    for p in plan:
        lines.append(f"  {p['row']}: NFE {p['nfe_how']}; prompt: {p['prompt_how']}")
    if total[1]:
        lines.append(f"total (estimate) of the rows whose evaluation size the source states: {_dur(total[0])} - "
                     f"{_dur(total[1])} of GPU time; the others: GPU s/item times their number of items")
    return "\n".join(lines)


# -- comparison ---------------------------------------------------------------------------------------


def compare(published: dict, values: list[float], items: int | None) -> dict:
    """Published vs measured: the measured mean with its 95% interval, the difference with Newcombe's
    hybrid score interval (the published value a proportion over `items` items), significant when
    that interval excludes 0. Values are per-item outcomes in [0, 1]."""
    from harness.stats.intervals import LEVEL, proportion_interval, wilson_interval

    scale = published.get("scale", 100)
    p0 = published["value"] / scale
    iv = proportion_interval(values)
    out = {"published": p0, "measured": iv.mean, "lo": iv.lo, "hi": iv.hi, "n": iv.n, "method": iv.method,
           "level": LEVEL, "diff": None, "diff_lo": None, "diff_hi": None, "significant": None}
    if iv.n == 0:
        return out
    d = iv.mean - p0
    out["diff"] = d
    if items:
        pub = wilson_interval(p0 * items, items)
        out["diff_lo"] = d - math.sqrt((iv.mean - iv.lo) ** 2 + (pub.hi - p0) ** 2)
        out["diff_hi"] = d + math.sqrt((iv.hi - iv.mean) ** 2 + (p0 - pub.lo) ** 2)
        out["diff_method"] = f"Newcombe hybrid score (published over {items} items)"
    else:  # the published value's own error unknown: the measured interval alone
        out["diff_lo"], out["diff_hi"] = iv.lo - p0, iv.hi - p0
        out["diff_method"] = "measured Wilson interval only (the source's evaluation size is not stated)"
    out["significant"] = not (out["diff_lo"] <= 0 <= out["diff_hi"])
    return out


def protocol_text(r: Row) -> str:
    p = r.protocol
    parts = [f"scoring {p['scoring']}"]
    if p.get("shots") is not None:
        parts.append(f"{p['shots']}-shot")
    if p.get("chat_template") is not None:
        parts.append("chat template" if p["chat_template"] else "no chat template")
    if p.get("add_special_tokens"):
        parts.append("tokenizer special tokens on")
    if p.get("prompt_template"):
        parts.append(f"prompt {p['prompt_template']}")
    if p.get("prefill"):
        parts.append(f"prefill {p['prefill']!r}")
    if p.get("filter"):
        parts.append(f"filter {p['filter']}")
    if p.get("test_set"):
        parts.append(f"test set {p['test_set']}")
    if p.get("samples"):
        parts.append(f"mean of {p['samples']} response{'s' if p['samples'] > 1 else ''} per item")
    if p.get("checkpoint"):
        parts.append(f"checkpoint {p['checkpoint']}")
    dec = ", ".join(f"{k}={v}" for k, v in r.decoding.items())
    return "; ".join(parts) + f"; decoding {dec}"


def report_text(table: Table, results: list[tuple[Row, dict, Path]], scored: bool = False) -> str:
    """The report; `scored`: the measured values grade a file of given generations (a row's missing
    settings then concern only a run of the harness, not the grading)."""
    lines = [f"# Reproduction: {table.title}", "",
             f"Source: {_src(table.source)}. Measured values carry a 95% Wilson interval; the difference "
             "carries Newcombe's hybrid score interval (the published value read as a proportion over the "
             "source's evaluation set); 'significant' means that interval excludes 0.", "",
             "| row | model | task | published | measured [95% CI] | n | difference [95% CI] | significant | "
             "speed (NFE/seq, tokens/forward, tokens/s) | protocol | run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r, c, run_dir in results:
        pub = f"{100 * c['published']:.1f}"
        if c["n"] == 0:
            meas, diff, sig = "n/a", "n/a", "n/a"
        else:
            meas = f"{100 * c['measured']:.1f} [{100 * c['lo']:.1f}, {100 * c['hi']:.1f}]"
            diff = f"{100 * c['diff']:+.1f} [{100 * c['diff_lo']:+.1f}, {100 * c['diff_hi']:+.1f}]"
            sig = "yes" if c["significant"] else "no"
        sp = c.get("speed") or {}
        speed = "-"
        if sp.get("nfe"):
            speed = f"{sp['nfe']:.1f}, {sp['tpf']:.2f}, " + (f"{sp['tokens_per_s']:.1f}" if sp.get("tokens_per_s")
                                                              else "-")
        if r.published.get("tokens_per_s") is not None:
            speed += f" (published {r.published['tokens_per_s']:g} tokens/s"
            speed += f", {r.published['speedup']:g}x)" if r.published.get("speedup") is not None else ")"
        lines.append(f"| {r.id} | {r.model} | {r.task} | {pub} | {meas} | {c['n']} | {diff} | {sig} | {speed} | "
                     f"{protocol_text(r)} | {run_dir} |")
    what = ("generations given, graded under the row's protocol; a harness run of this row would lack"
            if scored else "not exactly the published setting")
    notes = [f"- {r.id}: {what}: {'; '.join(r.missing)}" for r, _, _ in results if r.missing]
    notes += [f"- {r.id}: unstated in the source: {'; '.join(r.unstated)}" for r, _, _ in results if r.unstated]
    notes += [f"- {r.id}: differs from the source: {'; '.join(r.differs)}" for r, _, _ in results if r.differs]
    notes += speedup_lines(results)
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def speedup_lines(results: list[tuple[Row, dict, Path]]) -> list[str]:
    """Each row's speed-up over the row it names (`published.speedup_over`), when both ran: the published
    one (tokens/s on the authors' machine) beside the measured tokens/s ratio (this machine) and the NFE
    ratio (no machine in it)."""
    by = {r.id: c for r, c, _ in results}
    out = []
    for r, c, _ in results:
        ref = by.get(r.published.get("speedup_over") or "")
        a, b = c.get("speed") or {}, (ref or {}).get("speed") or {}
        if not a.get("nfe") or not b.get("nfe") or r.published.get("speedup_over") == r.id:
            continue
        tps = (f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x tokens/s here"
               if a.get("tokens_per_s") and b.get("tokens_per_s") else "tokens/s not measured")
        pub = f"{r.published['speedup']:g}x published" if r.published.get("speedup") is not None else "none published"
        out.append(f"- {r.id} over {r.published['speedup_over']}: {pub}; {tps}; {b['nfe'] / a['nfe']:.2f}x fewer "
                   "forward passes per sequence (machine-independent)")
    return out


def _speed(records: list[dict]) -> dict:
    """NFE per sequence, tokens per forward pass (TPF: generated positions `generation.gen_len` over
    forward passes, as d3LLM's AUP counts parallelism) and generated tokens/s of generation records."""
    ok = [r for r in records if r.get("status") == "ok" and isinstance(r.get("cost"), dict)
          and isinstance((r.get("generation") or {}).get("gen_len"), int)]
    nfe = sum(r["cost"].get("nfe", 0) for r in ok)
    tokens = sum(r["generation"]["gen_len"] for r in ok)
    wall = sum(r["cost"].get("wall_s", 0) for r in ok)
    if not ok or nfe <= 0:
        return {}
    return {"nfe": nfe / len(ok), "tpf": tokens / nfe, "tokens_per_s": tokens / wall if wall > 0 else None}


def _values(records: list[dict]) -> list[float]:
    vals = []
    for rec in records:
        out = rec.get("outcome") or {}
        v = out.get("value") if isinstance(out, dict) else None
        vals.append(float(v) if rec.get("status") == "ok" and isinstance(v, (int, float)) else 0.0)
    return vals


def write_report(out_dir: Path, table: Table, results: list[tuple[Row, dict, Path]], scored: bool = False) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"reproduce-{table.name}.md"
    path.write_text(report_text(table, results, scored))
    data = [{"row": r.id, "model": r.model, "task": r.task, "protocol": r.protocol, "decoding": r.decoding,
             "source": r.source, "missing": r.missing, "unstated": r.unstated, "run": str(d), **c}
            for r, c, d in results]
    (out_dir / f"reproduce-{table.name}.json").write_text(json.dumps(data, indent=1, default=str))
    return path


# -- scoring published generations --------------------------------------------------------------------

D1_FILE = re.compile(r"^(gsm8k|math|countdown|sudoku)_")
D1_TASKS = {"gsm8k": "gsm8k", "math": "math500", "countdown": "countdown3", "sudoku": "sudoku4"}


def _row_for_file(table: Table, path: Path) -> Row:
    """The row a generation file belongs to: from d1's file name (task) and JSON header (gen_length,
    diffusion_steps, block_length); otherwise the table's only row."""
    cands = [r for r in table.rows if r.harness_task is not None]
    m = D1_FILE.match(path.name)
    header = {}
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
            header = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            header = {}
    if m:
        cands = [r for r in cands if r.harness_task["name"] == D1_TASKS[m.group(1)]]
    for key, dkey in (("gen_length", "gen_length"), ("diffusion_steps", "steps"), ("block_length", "block_length")):
        if key in header:
            cands = [r for r in cands if r.decoding.get(dkey) == header[key]]
    if len(cands) != 1:
        names = ", ".join(r.id for r in cands) or "none"
        raise HarnessError(f"reproduce {table.name} --generations {path}: cannot tell which row the file belongs "
                           f"to (candidates: {names}); name one with --rows")
    return cands[0]


def score_generations(table: Table, rows: list[str] | None, path, results="results", argv=None) -> Path:
    from harness.records import read_records
    from harness.score import score_file

    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"reproduce --generations {path}: no such file")
    chosen = select(table, rows) if rows else [_row_for_file(table, path)]
    if len(chosen) != 1:
        raise HarnessError(f"reproduce {table.name} --generations: name one row with --rows (a file holds one "
                           f"row's generations), got {len(chosen)}")
    r = chosen[0]
    if r.harness_task is None:
        raise HarnessError(f"reproduce {table.name} row {r.id}: task {r.task!r} has no harness task to score with")
    params = dict(r.harness_task.get("params") or {})
    protocol = params.pop("protocol", None)
    run_dir, counts = score_file(path, r.harness_task["name"], protocol=protocol, results=results,
                                 suite=f"reproduce-{table.name}", system=f"{table.name}/{r.id}", argv=argv,
                                 task_params=params)
    records = [x for x in read_records(run_dir) if x.get("kind") == "score"]
    c = compare(r.published, _values(records), r.items)
    c["counts"] = counts
    return write_report(run_dir, table, [(r, c, run_dir)], scored=True)


# -- running ------------------------------------------------------------------------------------------


def row_model_options(r: Row) -> dict:
    """The model options the row's protocol sets ({model field: value}; `MODEL_OPTIONS`)."""
    return {option: bool(r.protocol[key]) for key, option in MODEL_OPTIONS.items() if r.protocol.get(key) is not None}


def check_prefill(r: Row, task) -> None:
    """The row's declared prefill must be the one its harness task's prompt format feeds."""
    want, got = r.protocol.get("prefill") or "", getattr(task, "prefill", "") or ""
    if want != got:
        raise HarnessError(f"reproduce {r.key}: the protocol's prefill is {want!r} but harness task "
                           f"{r.harness_task['name']} {r.harness_task.get('params') or {}} feeds {got!r} "
                           "(a prompt format with that prefill is needed)")


def suite_for(table: Table, rows: list[Row], model_params: dict, n_items: int | None) -> dict:
    """One suite: a model per (checkpoint, prompt options), a task per (task, params), a generate study per row."""
    models, tasks, studies = {}, {}, []
    for r in rows:
        options = row_model_options(r)
        mk = re.sub(r"[^A-Za-z0-9_-]", "_", r.model) + "".join(f"-{k}_{str(v).lower()}" for k, v in options.items())
        params = {"path": r.model, **options, **model_params}
        models.setdefault(mk, {"name": r.family, "params": params})
        tp = dict(r.harness_task.get("params") or {})
        tk = r.harness_task["name"] + ("-" + "-".join(f"{k}_{v}" for k, v in sorted(tp.items())) if tp else "")
        tk = re.sub(r"[^A-Za-z0-9_-]", "_", tk)
        tasks.setdefault(tk, {"name": r.harness_task["name"], "params": tp, "split": "test", "n_items": n_items})
        sampler = {k: v for k, v in r.decoding.items() if k != "sampler"}
        studies.append({"id": r.id, "kind": "generate", "model": mk, "task": tk,
                        "sampler": {"name": r.decoding["sampler"], "params": sampler}})
    return {"suite": f"reproduce-{table.name}", "description": f"reproduction of {table.title}",
            "models": models, "tasks": tasks, "studies": studies, "metrics": {"accuracy": "higher"}}


def run_rows(table: Table, rows: list[str] | None, results="results", model_params: dict | None = None,
             n_items: int | None = None, progress: bool = True, argv=None, resume=None) -> Path:
    import yaml

    from harness.records import read_records
    from harness.runner import Runner

    chosen = select(table, rows)
    blocked = [r for r in chosen if not r.runnable]
    if blocked:
        raise HarnessError(f"reproduce {table.name}: rows not runnable as published: "
                           + "; ".join(f"{r.id} ({', '.join(r.missing)})" for r in blocked)
                           + " (plan them with --dry-run, score their published generations with --generations)")
    from harness.registry import TASKS

    for r in chosen:
        check_prefill(r, TASKS.build(r.harness_task["name"], dict(r.harness_task.get("params") or {})))
    suite = suite_for(table, chosen, dict(model_params or {}), n_items)
    suite_dir = Path(results) / suite["suite"]
    suite_dir.mkdir(parents=True, exist_ok=True)
    path = suite_dir / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    runner = Runner(path, results=results, resume=resume, progress=progress, argv=argv)
    run_dir = runner.run()
    records = read_records(run_dir)
    out = []
    for r in chosen:
        recs = [x for x in records if x.get("study") == r.id and x.get("kind") == "generate"]
        c = compare(r.published, _values(recs), r.items)
        c["speed"] = _speed(recs)
        out.append((r, c, run_dir))
    return write_report(run_dir, table, out)
