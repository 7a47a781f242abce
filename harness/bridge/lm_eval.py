"""lm-evaluation-harness integration: the `dlm-harness` LM (the only module that imports lm_eval).

    lm_eval --model dlm-harness --model_args model=tiny,sampler=low_confidence,estimator=mc_elbo,n_mc=8 \
        --include_path harness/tasks/lm_eval --tasks harness/tasks/lm_eval/dlmh_gsm8k.yaml --limit 2

Importing this module registers `DLMHarnessLM` under "dlm-harness" in lm-eval's model registry;
the task YAMLs' utils.py imports it, so naming a YAML file in --tasks (its functions are resolved
before the model is made) or running `python -m harness.bridge` (lm-eval's CLI with the model
registered first) both work. The logic lives in harness/bridge/engine.py.

Data parallelism (lm-eval's own): under torchrun, RANK / WORLD_SIZE become `rank` / `world_size`,
so lm-eval gives each process every world_size-th document and gathers the per-sample results
to rank 0, which alone returns (and the CLI writes) them. The bridge joins the torchrun process
group (gloo on CPU, nccl on GPU, one GPU per LOCAL_RANK) on its first collective and serves
lm-eval's all_gather / gather_object / barrier with torch.distributed. Per-request seeds come
from request content, so a document's generation does not depend on which rank serves it.

    torchrun --nproc_per_node=2 -m harness.bridge --model dlm-harness --model_args model=tiny \
        --include_path harness/tasks/lm_eval --tasks dlmh_countdown3 --limit 6 --output_path out
"""
from __future__ import annotations

import atexit
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


def _split_padding(pairs: list[tuple[Any, Request]]) -> tuple[list[int], dict[int, int]]:
    """With world_size > 1 lm-eval pads a shorter rank's list by repeating its last request (so
    every rank runs as many requests as the longest; ours run no collectives there). A copy past
    an instance's `repeats` is such padding: -> (indices to serve, padding index -> the served
    index it copies). The copy's answer is appended to that request's `resps` after its own, so
    lm-eval's `take_first` filter and the metrics see exactly the single-process result."""
    real, copies, first = [], {}, {}
    for n, (inst, req) in enumerate(pairs):
        repeats = max(1, int(getattr(inst, "repeats", 1) or 1))
        if req.repeat >= repeats:
            copies[n] = first[(req.task, req.doc_id, req.idx, req.repeat % repeats)]
        else:
            first[(req.task, req.doc_id, req.idx, req.repeat)] = n
            real.append(n)
    return real, copies


def _served(pairs, serve, world_size: int) -> list:
    """serve(the real pairs) -> one answer per pair, padding copies answered by their original
    (lm-eval pads only when world_size > 1; one process serves every pair it is given)."""
    if world_size <= 1:
        return serve(pairs)
    real, copies = _split_padding(pairs)
    answers = serve([pairs[n] for n in real])
    out: dict[int, Any] = dict(zip(real, answers, strict=True))
    return [out[n] if n in out else out[copies[n]] for n in range(len(pairs))]


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
        self._rank, self._world_size = rank_and_world()
        if self._world_size > 1 and str(model_args.get("device", "")) == "cuda":
            model_args["device"] = f"cuda:{_env_int('LOCAL_RANK', 0)}"  # one GPU per process
        self.engine = Engine.from_args(model_args, denoiser=denoiser)
        self._device = self.engine.denoiser.device  # lm-eval puts its per-rank count tensors here
        if self._world_size > 1:
            self.engine.side.tag = {"rank": self._rank, "world_size": self._world_size}
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
        return _served(_with_repeats(requests), lambda pairs: self.engine.generate(
            [(inst.args[0], inst.args[1], req) for inst, req in pairs]), self._world_size)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return _served(_with_repeats(requests), self._loglikelihood, self._world_size)

    def _loglikelihood(self, pairs) -> list[tuple[float, bool]]:
        items = []
        for inst, req in pairs:
            context, continuation = inst.args[0], inst.args[1]
            ctx, cont = self.engine.encode_pair(context, continuation)  # lm-eval's and LLaDA's split
            if not cont:
                raise HarnessError(f"loglikelihood: continuation {continuation!r} has no tokens for this model")
            items.append((ctx, cont, req))
        return self.engine.score(items)

    def loglikelihood_rolling(self, requests) -> list[float]:
        """The estimator on the whole text: windows of the model's length after a BOS (EOS) token,
        each scored given the text before it (lm-eval's rolling windows, made disjoint)."""
        return _served(_with_repeats(requests), self._rolling, self._world_size)

    def _rolling(self, requests) -> list[float]:
        eng = self.engine
        width = (eng.max_length or 2048) - 1  # context + continuation must fit the model
        pairs, owner, extra = [], [], []
        for n, (inst, req) in enumerate(requests):
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

    # -- chat templates (lm-eval's --apply_chat_template / --fewshot_as_multiturn call these) --------
    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The tokenizer's chat template ("" when it has none: lm-eval then leaves prompts as text)."""
        if not chat_template:
            return None
        hf = getattr(self.engine.denoiser.tokenizer, "hf", None)
        return getattr(hf, "chat_template", None) or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """lm-eval's messages (a few-shot history as turns with --fewshot_as_multiturn) as the model's
        chat text; the model's BOS, written by its template, is not doubled by the context's encoding."""
        hf = getattr(self.engine.denoiser.tokenizer, "hf", None)
        if hf is None or not getattr(hf, "chat_template", None):
            raise HarnessError(f"--apply_chat_template: model {self.engine.bridge['model']!r} has no chat template")
        return hf.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt)

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
        """torch.distributed once joined (world_size > 1), else None (single process)."""
        return init_distributed() if self._world_size > 1 else None

    def gather_object(self, obj, dst=0):
        dist = self._dist()
        if dist is None:
            return [obj]
        out = [None] * self._world_size if self._rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def all_gather(self, tensor):
        """-> the ranks' tensors concatenated in rank order (0-d tensors stacked: one per rank)."""
        dist = self._dist()
        if dist is None:
            return tensor
        import torch

        local = tensor.to(_comm_device(dist))
        parts = [torch.empty_like(local) for _ in range(self._world_size)]
        dist.all_gather(parts, local.contiguous())
        joined = torch.stack(parts) if local.dim() == 0 else torch.cat(parts)
        return joined.to(tensor.device)

    def barrier(self) -> None:
        dist = self._dist()
        if dist is not None:
            dist.barrier()


def rank_and_world() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as torchrun sets them; (0, 1) without torchrun."""
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    if not 0 <= rank < world:
        raise HarnessError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return rank, world


def share_from_rank0(obj):
    """-> rank 0's obj on every rank (joins the torchrun process group when WORLD_SIZE > 1)."""
    rank, world = rank_and_world()
    if world <= 1:
        return obj
    box = [obj if rank == 0 else None]
    init_distributed().broadcast_object_list(box, src=0)
    return box[0]


def _env_int(key: str, default: int) -> int:
    raw = os.environ.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise HarnessError(f"environment {key}={raw!r}: expected an integer (as torchrun sets it)") from None


def init_distributed():
    """Join the torchrun process group if not joined yet: nccl when CUDA is available (each rank on
    cuda:LOCAL_RANK), else gloo. -> torch.distributed. Needs torchrun's MASTER_ADDR / MASTER_PORT."""
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise HarnessError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if dist.is_initialized():
        return dist
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise HarnessError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} but {', '.join(missing)} not set: "
                           "launch with torchrun (it sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    dist.init_process_group(backend=backend, rank=_env_int("RANK", 0), world_size=_env_int("WORLD_SIZE", 1))
    atexit.register(_leave, dist)
    return dist


def _leave(dist) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _comm_device(dist):
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


# -- what harness/evaluate.py needs from lm_eval (kept here: the one module importing it) ----------
def simple_evaluate(lm: DLMHarnessLM, tasks: list[str], *, include_path: str | None, metadata: dict,
                    limit: int | None, num_fewshot: int | None, seed: int, bootstrap_iters: int,
                    apply_chat_template: bool = False, fewshot_as_multiturn: bool = False) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from harness.tasks.sandbox import unsafe_code_allowed  # lm-eval's own code tasks: only when allowed

    manager = TaskManager(include_path=include_path, metadata=metadata)
    return lm_eval.simple_evaluate(
        model=lm, tasks=tasks, limit=limit, num_fewshot=num_fewshot, task_manager=manager,
        log_samples=True, bootstrap_iters=bootstrap_iters, confirm_run_unsafe_code=unsafe_code_allowed(),
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        apply_chat_template=apply_chat_template, fewshot_as_multiturn=fewshot_as_multiturn)


def main(argv: list[str] | None = None) -> None:
    """lm-eval's own CLI with the `dlm-harness` model registered (python -m harness.bridge)."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = ["lm_eval", *argv]
    cli_evaluate()
