"""Functions the dlm-harness lm-eval task YAMLs reference (`!function utils.<name>`).

Data comes from the harness task (`TASKS.build(name).docs(split)`: the hub when reachable, else
the offline copy; `source()` says which), prompts from its `doc_to_item` (few-shot included, so
the YAMLs set num_fewshot: 0 and the harness task's `fewshot` is passed as task metadata), and
scores from its scorer; code runs in the harness sandbox through the task's `score`, never through
`evaluate`'s code_eval. Importing this module registers the `dlm-harness` model with lm-eval.
"""
from __future__ import annotations

import json
from functools import lru_cache

import harness.bridge.lm_eval  # noqa: F401  (registers "dlm-harness" with lm-eval's model registry)
from harness.registry import TASKS
from harness.types import Item

# Task metadata keys (lm-eval --metadata, or TaskManager metadata) that set harness task fields.
TASK_FIELDS = ("fewshot", "prompt_format", "protocol")


def _params(name: str, given: dict | None = None, **metadata) -> dict:
    """The harness task's parameters: `task_params` from the YAML, then fields set in metadata."""
    params = dict(given or {})
    fields = TASKS.fields(name)
    for key in TASK_FIELDS:
        if metadata.get(key) is not None and key in fields:
            params[key] = metadata[key]
    return params


def rows(name: str, split: str = "test", params: dict | None = None) -> list[dict]:
    """One lm-eval document per item: the formatted prompt, the reference and the item's metadata
    (as JSON text, so columns have one type), plus which task and data source made it."""
    task = _task(name, json.dumps(params or {}, sort_keys=True))
    if hasattr(task, "docs") and hasattr(task, "doc_to_item"):
        items = [task.doc_to_item(doc, i) for i, doc in enumerate(task.docs(split))]
    else:  # the synthetic tasks: items are generated, not read
        items = task.items(split)
    source = str(task.source())
    p = json.dumps(params or {}, sort_keys=True)
    return [{"id": it.id, "prompt": it.prompt, "reference": it.reference,
             "meta": json.dumps(it.meta, sort_keys=True, default=str), "task": name, "task_params": p,
             "source": source} for it in items]


def load_dataset(harness_task: str, split: str = "test", task_params: dict | None = None, **metadata):
    """custom_dataset: lm-eval calls it with the task's metadata (model_args and --metadata keys
    among them; only TASK_FIELDS are read) and dataset_kwargs (harness_task, split, task_params)."""
    import datasets

    params = _params(harness_task, task_params, **metadata)
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows(harness_task, split, params))})


@lru_cache(maxsize=32)
def _task(name: str, params_json: str):
    return TASKS.build(name, json.loads(params_json), f"lm-eval task {name}")


def item_of(doc: dict) -> Item:
    return Item(id=doc["id"], prompt=doc["prompt"], reference=doc["reference"], meta=json.loads(doc["meta"]))


def doc_to_text(doc: dict) -> str:
    return doc["prompt"]


def doc_to_target(doc: dict) -> str:
    return doc["reference"]


def keep_all(resps, docs):
    """Filter for code tasks: keep every repeat's completion (pass@k needs all n of them)."""
    return resps


def process_results(doc: dict, results: list) -> dict:
    """Exact answer tasks: the harness scorer on the (first) completion, under the task's protocol.
    `accuracy` is always whole-answer accuracy (d1's Sudoku cell accuracy is not renamed into it)."""
    task = _task(doc["task"], doc["task_params"])
    v = task.grade(item_of(doc), results[0])
    return {"accuracy": float(v.value if v.metric == "accuracy" else v.extra.get("accuracy", v.value))}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k); the tasks' own when present."""
    try:
        from harness.tasks._passk import pass_at_k as own
    except ImportError:
        own = None
    if own is not None:
        return float(own(n, c, k))
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def process_code(doc: dict, results: list) -> dict:
    """Code tasks: each of the n completions runs against the tests in the harness sandbox (via
    the task's scorer); pass@1 is c / n, and pass@k (k = 10 when n >= 10) the unbiased estimate."""
    completions = results[0] if isinstance(results[0], (list, tuple)) else list(results)
    task = _task(doc["task"], doc["task_params"])
    item = item_of(doc)
    n = len(completions)
    c = sum(float(task.score(item, text)) >= 1.0 for text in completions)
    out = {"pass@1": pass_at_k(n, c, 1)}
    if n >= 10:
        out["pass@10"] = pass_at_k(n, c, 10)
    return out
