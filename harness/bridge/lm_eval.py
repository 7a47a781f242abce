"""lm-evaluation-harness integration: the `dlm-harness` LM (the only module that imports lm_eval).

    lm_eval --model dlm-harness --model_args model=tiny,sampler=low_confidence,estimator=mc_elbo,n_mc=8 \
        --include_path harness/tasks/lm_eval --tasks harness/tasks/lm_eval/dlmh_gsm8k.yaml --limit 2

Importing this module registers `DLMHarnessLM` under "dlm-harness" in lm-eval's model registry;
the task YAMLs' utils.py imports it, so naming a YAML file in --tasks (its functions are resolved
before the model is made) or running `python -m harness.bridge` (lm-eval's CLI with the model
registered first) both work. The logic lives in harness/bridge/engine.py.

Data parallelism: RANK / WORLD_SIZE (set by torchrun) become `rank` / `world_size`, so lm-eval
gives each process its share of the documents; results are gathered with torch.distributed.
"""
from __future__ import annotations

import os
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from harness.bridge.engine import Engine, Request
from harness.types import HarnessError


def _request(inst, repeat: int) -> Request:
    return Request(task=getattr(inst, "task_name", None), doc_id=getattr(inst, "doc_id", None),
                   idx=int(getattr(inst, "idx", 0) or 0), repeat=repeat)


def _with_repeats(requests) -> list[tuple[Any, Request]]:
    """lm-eval passes an instance once per repeat: the k-th occurrence is repeat k (own seed)."""
    seen: dict = {}
    out = []
    for inst in requests:
        key = (getattr(inst, "task_name", None), getattr(inst, "doc_id", None), getattr(inst, "idx", 0))
        k = seen.get(key, 0)
        seen[key] = k + 1
        out.append((inst, _request(inst, k)))
    return out


@register_model("dlm-harness")
class DLMHarnessLM(LM):
    """lm-eval's LM interface over a harness model, sampler and estimator (see engine.py)."""

    def __init__(self, denoiser=None, **model_args):
        super().__init__()
        model_args.pop("max_batch_size", None)
        device = model_args.pop("device", None)
        bs = model_args.get("batch_size")
        if isinstance(bs, str):  # lm-eval's "auto" (or a number given as text)
            model_args["batch_size"] = int(bs) if bs.isdigit() else 8
        if device is not None and "device" not in model_args and str(device).startswith("cuda"):
            import torch

            if torch.cuda.is_available():
                model_args["device"] = str(device)
        self.engine = Engine.from_args(model_args, denoiser=denoiser)
        self._rank = int(os.environ.get("RANK", "0"))
        self._world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.model_args = model_args

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """lm-eval's own batch_size / device fill in only what model_args do not set."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**extra, **arg_dict)

    # -- requests ----------------------------------------------------------------------------------
    def generate_until(self, requests) -> list[str]:
        items = [(inst.args[0], inst.args[1], req) for inst, req in _with_repeats(requests)]
        return self.engine.generate(items)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        items = []
        for inst, req in _with_repeats(requests):
            context, continuation = inst.args[0], inst.args[1]
            ctx, _ = self.engine.encode(context)
            cont, _ = self.engine.encode(continuation)
            if not cont:
                raise HarnessError(f"loglikelihood: continuation {continuation!r} has no tokens for this model")
            items.append((ctx, cont, req))
        return self.engine.score(items)

    def loglikelihood_rolling(self, requests) -> list[float]:
        """The estimator on the whole text: windows of the model's length after a BOS (EOS) token,
        each scored given the text before it (lm-eval's rolling windows, made disjoint)."""
        eng = self.engine
        width = (eng.max_length or 2048) - 1  # context + continuation must fit the model
        pairs, owner, extra = [], [], []
        for n, (inst, req) in enumerate(_with_repeats(requests)):
            ids, _ = eng.encode(inst.args[0])
            windows = [make_disjoint_window(w) for w in
                       get_rolling_token_windows(ids, prefix_token=eng.denoiser.eos_id, max_seq_len=width,
                                                 context_len=1)]
            for w, (ctx, cont) in enumerate(windows):
                pairs.append((ctx, cont, Request(req.task, req.doc_id, req.idx * 100_000 + w, req.repeat)))
                owner.append(n)
                extra.append({"window": w, "windows": len(windows)})
        scores = eng.score(pairs, greedy=False, kind="loglikelihood_rolling", extra=extra) if pairs else []
        totals = [0.0] * len(requests)
        for n, (value, _) in zip(owner, scores):
            totals[n] += value
        return totals

    # -- provenance / distribution -----------------------------------------------------------------
    def get_model_info(self) -> dict:
        from harness.registry import params_of

        e = self.engine
        return {"dlm_harness": {"bridge": {k: v for k, v in e.bridge.items() if k != "records"},
                                "model_params": e.args["model"], "sampler_params": params_of(e.sampler),
                                "estimator_params": params_of(e.estimator), "max_length": e.max_length}}

    @property
    def tokenizer_name(self) -> str:
        return f"dlm-harness:{self.engine.bridge['model']}"

    def _dist(self):
        import torch.distributed as dist

        return dist if self._world_size > 1 and dist.is_available() and dist.is_initialized() else None

    def gather_object(self, obj, dst=0):
        dist = self._dist()
        if dist is None:
            return [obj]
        out = [None] * self._world_size if self._rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def all_gather(self, tensor):
        dist = self._dist()
        if dist is None:
            return tensor
        import torch

        parts = [torch.zeros_like(tensor) for _ in range(self._world_size)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)

    def barrier(self) -> None:
        dist = self._dist()
        if dist is not None:
            dist.barrier()


# -- what harness/evaluate.py needs from lm_eval (kept here: the one module importing it) ----------
def simple_evaluate(lm: DLMHarnessLM, tasks: list[str], *, include_path: str | None, metadata: dict,
                    limit: int | None, num_fewshot: int | None, seed: int, bootstrap_iters: int) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path, metadata=metadata)
    return lm_eval.simple_evaluate(
        model=lm, tasks=tasks, limit=limit, num_fewshot=num_fewshot, task_manager=manager,
        log_samples=True, bootstrap_iters=bootstrap_iters, confirm_run_unsafe_code=True,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)


def main(argv: list[str] | None = None) -> None:
    """lm-eval's own CLI with the `dlm-harness` model registered (python -m harness.bridge)."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = ["lm_eval", *argv]
    cli_evaluate()
