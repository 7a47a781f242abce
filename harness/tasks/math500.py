"""`math500`: the 500-problem MATH test subset of Lightman et al. (2023), scored by equivalence.

Formats: "minerva" (`Problem:\\n{p}\\n\\nSolution:`; with `fewshot=4` the four exemplars of
Lewkowycz et al. (2022), each ending "Final Answer: The final answer is X. I hope it is
correct."), "boxed" (zero-shot: reason step by step, final answer in `\\boxed{}`), and "d1-eval"
(zero-shot, the prompt of d1's evaluation: dllm-reasoning/d1 `eval/math500.py` `MATH500_SYSTEM_PROMPT`
through `GSM8KDataset.create_prompt`: the system prompt, a blank line and the problem as one user turn,
the answer prefilled with `<reasoning>` (`prefill`); the system prompt's quirks are kept: no space after
its first sentence, and a stray `"`, a space and a newline after `</answer>`).
The answer is the last `\\boxed{}` (or the Minerva final-answer sentence), checked against the
reference by `_math_equiv.is_equiv` (normalisation, math-verify, sympy).

Protocols (`protocol`, see harness/tasks/base.py):
- harness: `_extract.extract_math` and `_math_equiv.is_equiv` (math-verify accepts `0.25` for
  `\\frac14`, `-2 + 7i` for `7i - 2`).
- d1: dllm-reasoning/d1 `eval/parse_and_get_acc.py::parse_math_answers` (harness/tasks/_d1.py): the
  last box (unclosed: nothing), else the first `<answer>`; Hendrycks `is_equiv` (string equality
  after `strip_string`); raw text.
- lm-eval: the `math_verify` metric of lm-eval's `minerva_math500` (tasks/minerva_math/utils.py
  `process_results`): math-verify's `verify(parse(solution), parse(whole completion))`, the
  solution being the MATH-500 row's (or `\\boxed{answer}` when absent). lm-eval's other metric
  there, `exact_match` with Minerva's `normalize_final_answer`, is not re-implemented.
- strict: closed boxes only (all of them equivalent), else Minerva's "Final Answer: The final
  answer is X" sentence, else `<answer>` content; no "the answer is" guess; same equivalence.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import ClassVar, Literal

from harness.registry import TASKS
from harness.tasks import _d1
from harness.tasks._extract import FINAL_ANSWER, _strip_math, all_boxed, answer_span, clean, extract_math
from harness.tasks._math_equiv import MAX_CHARS, TIMEOUT_S, is_equiv, normalize
from harness.tasks._real import RealTask
from harness.tasks.base import Verdict
from harness.types import HarnessError, Item

# The four-shot prompt of Minerva (Lewkowycz et al., 2022, appendix), as used by lm-eval's minerva_math.
MINERVA_EXEMPLARS = (
    ("Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.",
     "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so $x\\ge2$, and "
     "$5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which gives "
     "$x<5$. Therefore, the domain of the expression is $\\boxed{[2,5)}$.\n"
     "Final Answer: The final answer is $[2,5)$. I hope it is correct."),
    ("If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} \\mathbf{B}).$",
     "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = (2)(12) = "
     "\\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct."),
    ("Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, how many "
     "times must Terrell lift them in order to lift the same total weight?",
     "If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\\cdot 12\\cdot20=480$ pounds of "
     "weight.  If he lifts two 15-pound weights instead for $n$ times, he will lift a total of "
     "$2\\cdot15\\cdot n=30n$ pounds of weight.  Equating this to 480 pounds, we can solve for $n$:\n"
     "\\begin{align*}\n30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}\n"
     "Final Answer: The final answer is $16$. I hope it is correct."),
    ("If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}has a solution "
     "$(x, y)$ where $x$ and $y$ are both nonzero,\nfind $\\frac{a}{b},$ assuming $b$ is nonzero.",
     "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$Since we also "
     "know that $6y-9x=b$, we have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\n"
     "Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct."),
)
BOXED_INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}."
# dllm-reasoning/d1 eval/math500.py MATH500_SYSTEM_PROMPT (a prompt string, transcribed with its quirks)
D1_EVAL_SYSTEM_PROMPT = ("You are a math expert. You will be given a question to solve. Solve it step by step. Wrap "
                         "the final answer in a \\boxed{}.\nRespond in the following format:\n<reasoning>\nYour "
                         "reasoning here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>\" \n")
D1_EVAL_PREFILL = "<reasoning>"  # d1 eval/eval.py: add_reasoning=True, "prefill for all models"
FORMATS = ("minerva", "boxed", "d1-eval")


def extract(completion: str) -> str | None:
    """The final answer of a MATH completion (see `_extract.extract_math`)."""
    return extract_math(completion)


def strict_math(completion: str) -> str | None:
    """MATH answer under `strict`: closed boxes (all equivalent to the last, else no answer), else
    the Minerva final-answer sentence, else `<answer>` content. Nothing else is read."""
    text = clean(completion)
    boxes = [b for b in all_boxed(text) if b]
    if boxes:
        last = _strip_math(boxes[-1])
        same = all(normalize(_strip_math(b)) == normalize(last) or is_equiv(_strip_math(b), last) for b in boxes)
        return last if same else None
    finals = FINAL_ANSWER.findall(text)
    if finals and (ans := _strip_math(finals[-1])):
        return ans
    span = answer_span(text)
    return _strip_math(span) if span and "\\boxed" not in span and "\\fbox" not in span else None


def lm_eval_math_verify(solution: str, completion: str) -> bool:
    """lm-eval minerva_math `math_verify`: verify(gold=parse(solution), target=parse(completion))."""
    from math_verify import parse, verify

    timeout = TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    try:
        return bool(verify(gold=parse(solution, parsing_timeout=timeout),
                           target=parse(completion[-4 * MAX_CHARS:] if timeout is None else completion,
                                        parsing_timeout=timeout), timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - a checker failure means "not shown equal"
        return False


@TASKS.register("math500")
@dataclass(frozen=True, kw_only=True)
class MATH500(RealTask):
    """MATH-500 (test only): the boxed answer, equivalent to the reference by math-verify/sympy."""

    version = "1"
    lm_eval_task = "minerva_math500"
    hub_id = "HuggingFaceH4/MATH-500"
    local_file = "math500/test.jsonl"
    splits = ("test",)
    stop_strings: ClassVar[tuple[str, ...]] = ("Problem:", "</s>", "<|im_end|>")
    protocols: ClassVar[dict[str, str]] = {
        "harness": "harness/tasks/_extract.py extract_math + _math_equiv.is_equiv (math-verify, sympy)",
        "d1": "dllm-reasoning/d1 eval/parse_and_get_acc.py parse_math_answers (Hendrycks is_equiv)",
        "lm-eval": "lm-evaluation-harness minerva_math500 math_verify metric",
        "strict": "closed boxes (agreeing), Minerva final-answer sentence or <answer> only",
    }
    fewshot: int = 0
    prompt_format: Literal["minerva", "boxed", "d1-eval"] = "minerva"
    protocol: str = "harness"  # a scoring protocol (harness/tasks/base.py PROTOCOLS)

    def __post_init__(self):
        self.check_protocol(self.protocol, "math500.protocol")
        if self.prompt_format not in FORMATS:
            raise HarnessError(f"math500: prompt_format must be one of {', '.join(FORMATS)}, "
                               f"got {self.prompt_format!r}")
        if not 0 <= self.fewshot <= 4 or (self.prompt_format != "minerva" and self.fewshot):
            raise HarnessError(f"math500: fewshot must be 0..4 (0 for {self.prompt_format}), got {self.fewshot}")

    @property
    def prefill(self) -> str:
        return D1_EVAL_PREFILL if self.prompt_format == "d1-eval" else ""

    @property
    def gen_length(self) -> int:
        return 512

    @staticmethod
    def _read_local(path, split: str) -> list[dict]:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def doc_to_item(self, doc: dict, index: int) -> Item:
        problem = doc["problem"]
        if self.prompt_format == "boxed":
            prompt = problem + BOXED_INSTRUCTION
        elif self.prompt_format == "d1-eval":
            prompt = D1_EVAL_SYSTEM_PROMPT + "\n\n" + problem
        else:
            shots = "".join(f"Problem:\n{p}\n\nSolution: {s}\n\n" for p, s in MINERVA_EXEMPLARS[: self.fewshot])
            prompt = f"{shots}Problem:\n{problem}\n\nSolution:"
        return Item(id=f"math500-{index}", prompt=prompt, reference=doc["answer"],
                    meta={"unique_id": doc.get("unique_id"), "subject": doc.get("subject"),
                          "level": doc.get("level"), "solution": doc.get("solution")})

    def item_from_answer(self, item_id: str, question: str, answer, meta: dict | None = None) -> Item:
        """The reference is the answer as written (LaTeX); `meta.solution` feeds the lm-eval protocol."""
        if answer is None or not str(answer).strip():
            raise ValueError("empty reference answer")
        return Item(id=item_id, prompt=question, reference=str(answer).strip(), meta=dict(meta or {}))

    def _grade(self, item: Item, text: str, protocol: str) -> Verdict:
        ref = item.reference
        if protocol == "d1":
            got = _d1.math_answer(text)
            return Verdict(float(got is not None and _d1.hendrycks_equiv(got, ref)), got, protocol=protocol)
        if protocol == "lm-eval":
            solution = (item.meta or {}).get("solution") or f"$\\boxed{{{ref}}}$"
            return Verdict(float(lm_eval_math_verify(solution, text)), None, metric="math_verify", protocol=protocol)
        got = strict_math(text) if protocol == "strict" else extract(text)
        return Verdict(float(is_equiv(got, ref)), got, protocol=protocol)
