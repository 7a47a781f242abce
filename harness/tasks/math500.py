"""`math500`: the 500-problem MATH test subset of Lightman et al. (2023), scored by equivalence.

Formats: "minerva" (`Problem:\\n{p}\\n\\nSolution:`; with `fewshot=4` the four exemplars of
Lewkowycz et al. (2022), each ending "Final Answer: The final answer is X. I hope it is
correct."), and "boxed" (zero-shot: reason step by step, final answer in `\\boxed{}`).
The answer is the last `\\boxed{}` (or the Minerva final-answer sentence), checked against the
reference by `_math_equiv.is_equiv` (normalisation, math-verify, sympy).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Literal

from harness.registry import TASKS
from harness.tasks._extract import extract_math
from harness.tasks._math_equiv import is_equiv
from harness.tasks._real import RealTask
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


def extract(completion: str) -> str | None:
    """The final answer of a MATH completion (see `_extract.extract_math`)."""
    return extract_math(completion)


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
    fewshot: int = 0
    prompt_format: Literal["minerva", "boxed"] = "minerva"

    def __post_init__(self):
        if self.prompt_format not in ("minerva", "boxed"):
            raise HarnessError(f"math500: prompt_format must be minerva or boxed, got {self.prompt_format!r}")
        if not 0 <= self.fewshot <= 4 or (self.prompt_format == "boxed" and self.fewshot):
            raise HarnessError(f"math500: fewshot must be 0..4 (0 for boxed), got {self.fewshot}")

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
        else:
            shots = "".join(f"Problem:\n{p}\n\nSolution: {s}\n\n" for p, s in MINERVA_EXEMPLARS[: self.fewshot])
            prompt = f"{shots}Problem:\n{problem}\n\nSolution:"
        return Item(id=f"math500-{index}", prompt=prompt, reference=doc["answer"],
                    meta={"unique_id": doc.get("unique_id"), "subject": doc.get("subject"),
                          "level": doc.get("level")})

    def score(self, item: Item, completion: str) -> float:
        return float(is_equiv(extract(completion), item.reference))
