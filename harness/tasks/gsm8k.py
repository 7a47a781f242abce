"""`gsm8k`: grade-school math word problems (Cobbe et al., 2021), scored on the final number.

Formats (`prompt_format`):
- "plain": lm-eval's `gsm8k` format, `Question: {q}\\nAnswer:`; few-shot exemplars are the first
  `fewshot` train rows with their full `#### N` answers, except `fewshot=8`, which uses the eight
  chain-of-thought exemplars of Wei et al. (2022) (ending "The answer is N.").
- "cot": lm-eval's `gsm8k_cot` format, `Q: {q}\\nA:` with the Wei et al. exemplars (at most 8).
- "d1": zero-shot with the d1 instruction to reason in `<reasoning>` and answer in `<answer>` tags
  (the question, then the instruction: the prompt of d1's diffu-GRPO training).
- "d1-eval": the prompt of d1's evaluation (dllm-reasoning/d1 `eval/gsm8k.py`
  `GSM8KDataset.create_prompt`, zero-shot as `eval/eval.py` runs it): its system prompt (the math
  expert, `\\boxed{}` inside `<answer>`), a blank line and the question, as one user turn; the
  answer is prefilled with `<reasoning>` (`prefill`: after the chat template's generation prompt).
- "cot-zeroshot": lm-eval's `gsm8k_cot_zeroshot`, `Q: {q}\\nA: Let's think step by step.` (zero-shot).
Few-shot exemplars of the "plain" format (`fewshot_sampler`): "first" takes the first `fewshot`
train rows (the same for every item); "lm-eval" draws them as lm-eval's default sampler does
(lm-eval 0.4.x `api/samplers.py` `ContextSampler.sample`: one `random.Random(fewshot_seed)`,
seeded once per task, `rnd.sample(train, fewshot)` per evaluated document in order; the seed is
`simple_evaluate`'s `fewshot_random_seed`, 1234 by default). Under data parallelism every rank
replays the same seeded sequence over its own documents (rank r evaluates documents r, r + W, ...),
so document i gets draw number i // W: `fewshot_processes` is W (1: one process).
Reference: the number after `####`. The scorer compares numbers exactly (`18.00` == `18`).

Protocols (`protocol`, see harness/tasks/base.py):
- harness: `_extract.extract_number` (`####`, last `\\boxed{}`, "The answer is", last number;
  `<answer>` content first; thousands commas and `$` read as such), compared exactly.
- d1: dllm-reasoning/d1 `eval/parse_and_get_acc.py::parse_gsm_answers` (harness/tasks/_d1.py): the
  first numeric box, else the first `<answer>`; float equality; raw text (no stop strings).
- lm-eval: lm-eval's `gsm8k` task (`gsm8k_cot` / `gsm8k_cot_zeroshot` for "cot" / "cot-zeroshot"), gsm8k.yaml
  v3.0: filters `strict-match` (`#### (\\-?[0-9\\.\\,]+)`; cot: `The answer is (\\-?[0-9\\.\\,]+).`,
  first match) and `flexible-extract` (`(-?[$0-9.,]{2,})|(-?[0-9]+)`, last match), then
  `exact_match` with ignore_case and regexes_to_ignore `,` `\\$` `(?s).*#### ` `\\.$` on both
  sides. The value is strict-match; flexible-extract is recorded beside it.
- strict: only declared answers (`<answer>`, closed boxes, `####`, "the answer is"); they must
  agree; no last-number fallback (`\\boxed{}` or a truncated output scores 0).
"""
from __future__ import annotations

import json
import random
import re
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar, Literal

from harness.registry import TASKS
from harness.tasks import _d1
from harness.tasks._extract import extract_number, format_number, strict_number
from harness.tasks._real import RealTask
from harness.tasks.base import Verdict
from harness.types import HarnessError, Item

# Wei et al. (2022), "Chain-of-Thought Prompting Elicits Reasoning in Large Language Models",
# Table 20: the eight exemplar problems, with step-by-step answers.
COT_EXEMPLARS = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
     "there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
     "been 21 - 15 = 6.", "6"),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5.", "5"),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
     "they had 74 - 35 = 39.", "39"),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
     "Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8.",
     "8"),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have "
     "now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. "
     "5 + 4 = 9.", "9"),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to "
     "thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 "
     "computers were added. 9 + 20 is 29.", "29"),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
     "balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, "
     "he had 35 - 2 = 33 golf balls.", "33"),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
     "left. 23 - 15 is 8.", "8"),
)
D1_INSTRUCTION = ("\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>")
# dllm-reasoning/d1 eval/gsm8k.py GSM_SYSTEM_PROMPT (a prompt string, transcribed; its first line ends in a space)
D1_EVAL_SYSTEM_PROMPT = ("You are a math expert. You will be given a question to solve. Solve it step by step. Wrap "
                         "the final answer in a \\boxed{}. \nRespond in the following format:\n<reasoning>\nYour "
                         "reasoning here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>")
D1_EVAL_PREFILL = "<reasoning>"  # d1 eval/eval.py: add_reasoning=True, "prefill for all models"
FORMATS = ("plain", "cot", "d1", "d1-eval", "cot-zeroshot")
FEWSHOT_SAMPLERS = ("first", "lm-eval")


_DRAWS: dict = {}  # (seed, pool size, k) -> (the seeded generator, the draws so far)
_DRAWS_LOCK = threading.Lock()


def lm_eval_fewshot_draw(seed: int, n_pool: int, k: int, draw: int) -> tuple[int, ...]:
    """The pool indices of lm-eval's few-shot draw number `draw` (0-based): `random.Random(seed)`, then
    `sample(pool, k)` once per document in order (random.sample picks positions from the pool's length
    alone, so indices into the train split name the documents lm-eval draws)."""
    with _DRAWS_LOCK:
        rnd, got = _DRAWS.setdefault((seed, n_pool, k), (random.Random(seed), []))
        while len(got) <= draw:
            got.append(tuple(rnd.sample(range(n_pool), k)))
        return got[draw]


def extract(completion: str) -> str | None:
    """The final number of a GSM8K completion (see `_extract.extract_number`)."""
    return extract_number(completion)


# lm-eval gsm8k.yaml / gsm8k-cot.yaml (v3.0): filters and the exact_match normalisation.
LM_EVAL_STRICT = {"plain": r"#### (\-?[0-9\.\,]+)", "d1": r"#### (\-?[0-9\.\,]+)",
                  "cot": r"The answer is (\-?[0-9\.\,]+).", "cot-zeroshot": r"The answer is (\-?[0-9\.\,]+)."}
LM_EVAL_FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
LM_EVAL_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")


def lm_eval_filter(text: str, pattern: str, group_select: int) -> str:
    """lm-eval's RegexFilter + take_first: the selected match (first non-empty group of a tuple),
    stripped, or "[invalid]"."""
    found = re.findall(pattern, text)
    if not found:
        return "[invalid]"
    m = found[group_select]
    if isinstance(m, tuple):
        m = next((g for g in m if g), "[invalid]")
    return m.strip()


def lm_eval_exact_match(pred: str, ref: str) -> bool:
    """lm-eval's exact_match with gsm8k's regexes_to_ignore and ignore_case."""
    for rx in LM_EVAL_IGNORE:
        pred, ref = re.sub(rx, "", pred), re.sub(rx, "", ref)
    return pred.lower() == ref.lower()


def final_answer(answer: str) -> str:
    """The number after `####` in a GSM8K reference solution, commas removed."""
    if "####" not in answer:
        raise HarnessError(f"gsm8k: reference answer without '####': {answer[-80:]!r}")
    return answer.split("####")[-1].strip().replace(",", "")


@TASKS.register("gsm8k")
@dataclass(frozen=True, kw_only=True)
class GSM8K(RealTask):
    """GSM8K test (1319) / train (7473): the final number counts, compared exactly."""

    version = "1"
    lm_eval_task = "gsm8k"
    hub_id = "openai/gsm8k"
    hub_config = "main"
    local_file = "gsm8k/test.jsonl"
    splits = ("train", "test")
    STOPS: ClassVar[tuple[str, ...]] = ("Question:", "</s>", "<|im_end|>", "\n\nQ:")
    COT_ZEROSHOT_STOPS: ClassVar[tuple[str, ...]] = ("Q:", "</s>", "<|im_end|>")  # gsm8k-cot-zeroshot.yaml until
    protocols: ClassVar[dict[str, str]] = {
        "harness": "harness/tasks/_extract.py extract_number, exact comparison",
        "d1": "dllm-reasoning/d1 eval/parse_and_get_acc.py parse_gsm_answers",
        "lm-eval": "lm-evaluation-harness tasks/gsm8k/gsm8k.yaml strict-match (+ flexible-extract)",
        "strict": "declared answers only, no last-number fallback",
    }
    fewshot: int = 0
    prompt_format: Literal["plain", "cot", "d1", "d1-eval", "cot-zeroshot"] = "plain"
    fewshot_sampler: Literal["first", "lm-eval"] = "first"  # how the plain format's exemplars are chosen
    fewshot_seed: int = 1234  # the lm-eval sampler's seed (lm-eval's fewshot_random_seed)
    fewshot_processes: int = 1  # the lm-eval sampler: the data-parallel processes lm-eval ran on
    protocol: str = "harness"  # a scoring protocol (harness/tasks/base.py PROTOCOLS)

    def __post_init__(self):
        self.check_protocol(self.protocol, "gsm8k.protocol")
        if self.prompt_format not in FORMATS:
            raise HarnessError(f"gsm8k: prompt_format must be one of {', '.join(FORMATS)}, got {self.prompt_format!r}")
        if self.fewshot < 0 or (self.prompt_format == "cot" and self.fewshot > 8):
            raise HarnessError(f"gsm8k: fewshot must be >= 0 (at most 8 for cot), got {self.fewshot}")
        if self.prompt_format in ("d1", "d1-eval", "cot-zeroshot") and self.fewshot:
            raise HarnessError(f"gsm8k: the {self.prompt_format} format is zero-shot (fewshot must be 0)")
        if self.fewshot_sampler not in FEWSHOT_SAMPLERS:
            raise HarnessError(f"gsm8k: fewshot_sampler must be first or lm-eval, got {self.fewshot_sampler!r}")
        if self.fewshot_sampler == "lm-eval" and self.prompt_format != "plain":
            raise HarnessError(f"gsm8k: fewshot_sampler lm-eval draws the plain format's train exemplars; the "
                               f"{self.prompt_format} format has its own (use fewshot_sampler: first)")
        if isinstance(self.fewshot_processes, bool) or not isinstance(self.fewshot_processes, int) \
                or self.fewshot_processes < 1:
            raise HarnessError(f"gsm8k: fewshot_processes must be an integer >= 1, got {self.fewshot_processes!r}")

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return self.COT_ZEROSHOT_STOPS if self.prompt_format == "cot-zeroshot" else self.STOPS

    @property
    def prefill(self) -> str:
        return D1_EVAL_PREFILL if self.prompt_format == "d1-eval" else ""

    @property
    def gen_length(self) -> int:
        return 256

    @staticmethod
    def _read_local(path, split: str) -> list[dict]:
        path = path.with_name(f"{split}.jsonl")
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def _exemplars(self, index: int = 0) -> str:
        """The few-shot block of test item `index` (the same for every item but under lm-eval's sampler)."""
        if self.fewshot == 0:
            return ""
        if self.prompt_format == "cot":
            shots = [f"Q: {q}\nA: {r} The answer is {a}." for q, r, a in COT_EXEMPLARS[: self.fewshot]]
        elif self.fewshot_sampler == "lm-eval":
            train = self.docs("train")
            draw = index // self.fewshot_processes
            picks = lm_eval_fewshot_draw(self.fewshot_seed, len(train), self.fewshot, draw)
            shots = [f"Question: {train[j]['question']}\nAnswer: {train[j]['answer']}" for j in picks]
        elif self.fewshot == 8:
            shots = [f"Question: {q}\nAnswer: {r} The answer is {a}." for q, r, a in COT_EXEMPLARS]
        else:
            train = self.docs("train")[: self.fewshot]
            shots = [f"Question: {d['question']}\nAnswer: {d['answer']}" for d in train]
        return "\n\n".join(shots) + "\n\n"

    def doc_to_item(self, doc: dict, index: int) -> Item:
        q = doc["question"]
        if self.prompt_format == "cot":
            prompt = f"{self._exemplars()}Q: {q}\nA:"
        elif self.prompt_format == "d1":
            prompt = q + D1_INSTRUCTION
        elif self.prompt_format == "d1-eval":
            prompt = D1_EVAL_SYSTEM_PROMPT + "\n\n" + q
        elif self.prompt_format == "cot-zeroshot":
            prompt = f"Q: {q}\nA: Let's think step by step."
        else:
            prompt = f"{self._exemplars(index)}Question: {q}\nAnswer:"
        return Item(id=f"gsm8k-{index}", prompt=prompt, reference=final_answer(doc["answer"]),
                    meta={"question": q})

    def item_from_answer(self, item_id: str, question: str, answer, meta: dict | None = None) -> Item:
        """The reference is the number after `####` (a full solution), or the answer itself."""
        text = str(answer)
        text = final_answer(text) if "####" in text else text.strip().replace(",", "").lstrip("$")
        try:
            ref = format_number(Fraction(text))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"reference answer {answer!r} is not a number") from None
        return Item(id=item_id, prompt=question, reference=ref, meta={"question": question, **(meta or {})})

    def _grade(self, item: Item, text: str, protocol: str) -> Verdict:
        ref = item.reference
        if protocol == "d1":
            got, truth = _d1.gsm8k_answer(text), _d1.gsm8k_reference(ref)
            return Verdict(float(got is not None and got == truth), None if got is None else repr(got),
                           protocol=protocol)
        if protocol == "lm-eval":
            strict = lm_eval_filter(text, LM_EVAL_STRICT.get(self.prompt_format, LM_EVAL_STRICT["plain"]), 0)
            flexible = lm_eval_filter(text, LM_EVAL_FLEXIBLE, -1)
            flex = float(lm_eval_exact_match(flexible, ref))
            return Verdict(float(lm_eval_exact_match(strict, ref)), strict, metric="exact_match", protocol=protocol,
                           extra={"strict-match": float(lm_eval_exact_match(strict, ref)), "flexible-extract": flex,
                                  "flexible_extracted": flexible})
        got = strict_number(text) if protocol == "strict" else extract(text)
        return Verdict(float(got is not None and Fraction(got) == Fraction(ref)), got, protocol=protocol)
