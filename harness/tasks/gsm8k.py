"""`gsm8k`: grade-school math word problems (Cobbe et al., 2021), scored on the final number.

Formats (`prompt_format`):
- "plain": lm-eval's `gsm8k` format, `Question: {q}\\nAnswer:`; few-shot exemplars are the first
  `fewshot` train rows with their full `#### N` answers, except `fewshot=8`, which uses the eight
  chain-of-thought exemplars of Wei et al. (2022) (ending "The answer is N.").
- "cot": lm-eval's `gsm8k_cot` format, `Q: {q}\\nA:` with the Wei et al. exemplars (at most 8).
- "d1": zero-shot with the d1 instruction to reason in `<reasoning>` and answer in `<answer>` tags.
Reference: the number after `####`. The scorer compares numbers exactly (`18.00` == `18`).

Protocols (`protocol`, see harness/tasks/base.py):
- harness: `_extract.extract_number` (`####`, last `\\boxed{}`, "The answer is", last number;
  `<answer>` content first; thousands commas and `$` read as such), compared exactly.
- d1: dllm-reasoning/d1 `eval/parse_and_get_acc.py::parse_gsm_answers` (harness/tasks/_d1.py): the
  first numeric box, else the first `<answer>`; float equality; raw text (no stop strings).
- lm-eval: lm-eval's `gsm8k` task (`gsm8k_cot` for prompt_format "cot"), tasks/gsm8k/gsm8k.yaml
  v3.0: filters `strict-match` (`#### (\\-?[0-9\\.\\,]+)`; cot: `The answer is (\\-?[0-9\\.\\,]+).`,
  first match) and `flexible-extract` (`(-?[$0-9.,]{2,})|(-?[0-9]+)`, last match), then
  `exact_match` with ignore_case and regexes_to_ignore `,` `\\$` `(?s).*#### ` `\\.$` on both
  sides. The value is strict-match; flexible-extract is recorded beside it.
- strict: only declared answers (`<answer>`, closed boxes, `####`, "the answer is"); they must
  agree; no last-number fallback (`\\boxed{}` or a truncated output scores 0).
"""
from __future__ import annotations

import json
import re
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


def extract(completion: str) -> str | None:
    """The final number of a GSM8K completion (see `_extract.extract_number`)."""
    return extract_number(completion)


# lm-eval gsm8k.yaml / gsm8k-cot.yaml (v3.0): filters and the exact_match normalisation.
LM_EVAL_STRICT = {"plain": r"#### (\-?[0-9\.\,]+)", "d1": r"#### (\-?[0-9\.\,]+)",
                  "cot": r"The answer is (\-?[0-9\.\,]+)."}
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
    stop_strings: ClassVar[tuple[str, ...]] = ("Question:", "</s>", "<|im_end|>", "\n\nQ:")
    protocols: ClassVar[dict[str, str]] = {
        "harness": "harness/tasks/_extract.py extract_number, exact comparison",
        "d1": "dllm-reasoning/d1 eval/parse_and_get_acc.py parse_gsm_answers",
        "lm-eval": "lm-evaluation-harness tasks/gsm8k/gsm8k.yaml strict-match (+ flexible-extract)",
        "strict": "declared answers only, no last-number fallback",
    }
    fewshot: int = 0
    prompt_format: Literal["plain", "cot", "d1"] = "plain"
    protocol: str = "harness"  # a scoring protocol (harness/tasks/base.py PROTOCOLS)

    def __post_init__(self):
        self.check_protocol(self.protocol, "gsm8k.protocol")
        if self.prompt_format not in ("plain", "cot", "d1"):
            raise HarnessError(f"gsm8k: prompt_format must be plain, cot or d1, got {self.prompt_format!r}")
        if self.fewshot < 0 or (self.prompt_format == "cot" and self.fewshot > 8):
            raise HarnessError(f"gsm8k: fewshot must be >= 0 (at most 8 for cot), got {self.fewshot}")
        if self.prompt_format == "d1" and self.fewshot:
            raise HarnessError("gsm8k: the d1 format is zero-shot (fewshot must be 0)")

    @property
    def gen_length(self) -> int:
        return 256

    @staticmethod
    def _read_local(path, split: str) -> list[dict]:
        path = path.with_name(f"{split}.jsonl")
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def _exemplars(self) -> str:
        if self.fewshot == 0:
            return ""
        if self.prompt_format == "cot":
            shots = [f"Q: {q}\nA: {r} The answer is {a}." for q, r, a in COT_EXEMPLARS[: self.fewshot]]
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
        else:
            prompt = f"{self._exemplars()}Question: {q}\nAnswer:"
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
            strict = lm_eval_filter(text, LM_EVAL_STRICT[self.prompt_format], 0)
            flexible = lm_eval_filter(text, LM_EVAL_FLEXIBLE, -1)
            flex = float(lm_eval_exact_match(flexible, ref))
            return Verdict(float(lm_eval_exact_match(strict, ref)), strict, metric="exact_match", protocol=protocol,
                           extra={"strict-match": float(lm_eval_exact_match(strict, ref)), "flexible-extract": flex,
                                  "flexible_extracted": flexible})
        got = strict_number(text) if protocol == "strict" else extract(text)
        return Verdict(float(got is not None and Fraction(got) == Fraction(ref)), got, protocol=protocol)
