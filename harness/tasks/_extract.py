"""Answer extraction from real model output: markup cleaning, final numbers, boxed answers.

Model completions arrive messy: chat markup (`<|im_start|>assistant`, `<|im_end|>`), end-of-text
and pad tokens (a diffusion LM fills its whole canvas, so an answer is often followed by runs of
`<|endoftext|>` or `<|mdm_mask|>`), `<answer>` tags, answers repeated until the canvas ends, and
text cut off mid-sentence. `clean` removes the markup; the extractors then look for the answer in
the order the field uses (GSM8K: `####`, `\\boxed{}`, "The answer is", last number).
"""
from __future__ import annotations

import re
from fractions import Fraction

# Tokens that end a turn or the text: everything after the first one (once some content was
# written) is padding or a hallucinated next turn.
END_TOKENS = ("<|im_end|>", "<|eot_id|>", "</s>", "<eos>", "<|endoftext|>", "<|end_of_text|>", "<|end|>",
              "<end_of_turn>", "<|eos|>", "[EOS]", "<｜end▁of▁sentence｜>")
# Tokens that carry no content anywhere: masks, pads, beginnings of text.
NOISE = re.compile(
    r"<\|(?:mdm_mask|mask|pad|padding|reserved_special_token_\d+|begin_of_text|startoftext)\|>"
    r"|\[(?:MASK|PAD|CLS|SEP|BOS)\]|<(?:mask|pad|s|bos|unk)>"
)
# A chat header such as `<|im_start|>assistant\n` or `<|start_header_id|>assistant<|end_header_id|>`.
HEADER = re.compile(
    r"<\|im_start\|>[ \t]*\w*[ \t]*\n?|<\|start_header_id\|>\s*\w*\s*<\|end_header_id\|>[ \t]*\n*"
    r"|<start_of_turn>[ \t]*\w*[ \t]*\n?"
)
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
OPEN_ANSWER = re.compile(r"<answer>", re.I)


def clean(text: str, strip: bool = True) -> str:
    """`text` without chat markup, mask/pad tokens and anything after the first end-of-text token.

    `strip=False` keeps leading and trailing whitespace (code continuations start indented).
    """
    text = NOISE.sub("", HEADER.sub("", text))
    for tok in END_TOKENS:
        head, sep, _ = text.partition(tok)
        if sep and head.strip():
            text = head
        text = text.replace(tok, "")
    return text.strip() if strip else text


def answer_span(text: str) -> str | None:
    """Content of the last complete `<answer>...</answer>`, else what follows an unclosed `<answer>`."""
    found = ANSWER_TAG.findall(text)
    for content in reversed(found):
        if content.strip():
            return content.strip()
    opens = list(OPEN_ANSWER.finditer(text))
    if opens and not found:
        rest = text[opens[-1].end():].strip()
        return rest or None
    return None


# -- numbers (GSM8K) --------------------------------------------------------------------------
_MINUS = "-\u2212\u2013"  # hyphen, minus sign, en dash
# An optional sign and currency, then digits with thousands commas (or plain digits), an optional
# decimal part, or a simple fraction a/b.
NUMBER = re.compile(
    rf"(?<![\w.])([{_MINUS}]?)\s?[$€£]?\s?((?:\d{{1,3}}(?:,\d{{3}})+|\d+)(?:\.\d+)?|\.\d+)(?:\s?/\s?(\d+)(?![\d.,]))?"
)
HASHES = re.compile(r"####\s*([^\n]*)")
ANSWER_IS = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s+is\s*:?\s*([^\n]*)", re.I)


def to_number(text: str) -> Fraction | None:
    """The first number in `text` as an exact Fraction: commas, currency, units and periods ignored."""
    m = NUMBER.search(text.replace("\\$", "$").replace("\\,", "").replace("{,}", ","))
    if m is None:
        return None
    value = Fraction(m.group(2).replace(",", ""))
    if m.group(3):
        if int(m.group(3)) == 0:
            return None
        value /= int(m.group(3))
    return -value if m.group(1) else value


def format_number(value: Fraction) -> str:
    """Canonical text of a number: `18`, `-2.5`, or `1/3` when it has no finite decimal form."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    return format(float(value), ".15g") if abs(value) < 1e15 else str(value)


def last_number(text: str) -> Fraction | None:
    matches = list(NUMBER.finditer(text.replace("\\$", "$").replace("{,}", ",")))
    return to_number(matches[-1].group(0)) if matches else None


def _numeric_answer(text: str) -> Fraction | None:
    """The answer chain of GSM8K on one span of text."""
    m = HASHES.search(text)  # the first `####`: the format's terminator; repeats after it are noise
    if m and (value := to_number(m.group(1))) is not None:
        return value
    boxed = last_boxed(text)
    if boxed is not None and (value := to_number(_unfrac(boxed))) is not None:
        return value
    for m in reversed(list(ANSWER_IS.finditer(text))):
        if (value := to_number(_unfrac(m.group(1)))) is not None:
            return value
    return last_number(text)


def _unfrac(text: str) -> str:
    """`\\frac{a}{b}` and `\\dfrac{a}{b}` with integer parts as `a/b` (boxed GSM8K answers)."""
    return re.sub(r"\\[dt]?frac\{\s*(\d+)\s*\}\{\s*(\d+)\s*\}", r"\1/\2", text)


def extract_number(completion: str) -> str | None:
    """GSM8K answer: after `####`, else the last `\\boxed{}`, else "The answer is X", else the last number.

    Inside `<answer>` tags the same chain runs on the tag's content first. Returns the canonical
    text of the number (`format_number`) or None.
    """
    text = clean(completion)
    span = answer_span(text)
    value = _numeric_answer(span) if span is not None else None
    if value is None:
        value = _numeric_answer(text)
    return None if value is None else format_number(value)


# -- boxed answers (MATH) ---------------------------------------------------------------------
_BOX = re.compile(r"\\(?:boxed|fbox)\b")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (nested braces), or of `\\boxed X`.

    None when there is none or its braces never close (truncated output).
    """
    for m in reversed(list(_BOX.finditer(text))):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth, start = 0, i
            for j in range(i, len(text)):
                c = text[j]
                if c == "\\" and j + 1 < len(text) and text[j + 1] in "{}":
                    continue
                if c == "{" and text[j - 1] != "\\":
                    depth += 1
                elif c == "}" and text[j - 1] != "\\":
                    depth -= 1
                    if depth == 0:
                        return text[start + 1 : j].strip()
            continue  # unclosed: look at an earlier box
        if i > m.end():  # `\boxed 5`: up to the next space, `$` or end
            word = re.match(r"[^\s$]+", text[i:])
            if word:
                return word.group(0).rstrip(".")
    return None


FINAL_ANSWER = re.compile(r"final answer is\s*:?\s*(.+?)(?:\.?\s*I hope it is correct|\n|$)", re.I)


def _strip_math(ans: str) -> str:
    ans = ans.strip()
    if ans.startswith("$") and ans.endswith("$") and len(ans) > 1:
        ans = ans.strip("$")
    elif ans.startswith("\\(") and ans.endswith("\\)"):
        ans = ans[2:-2]
    elif ans.startswith("\\[") and ans.endswith("\\]"):
        ans = ans[2:-2]
    return ans.strip().rstrip(".").strip()


def extract_math(completion: str) -> str | None:
    """MATH answer: the last `\\boxed{}`/`\\fbox{}`, else "Final Answer: The final answer is X",
    else "The answer is X" (on `<answer>` content first). LaTeX returned as written, `$` stripped.
    """
    text = clean(completion)
    span = answer_span(text)
    for part in ((span, text) if span is not None else (text,)):
        boxed = last_boxed(part)
        if boxed:
            return _strip_math(boxed)
        if _BOX.search(part):
            return None  # a box that never closes: truncated output, not an answer
        finals = FINAL_ANSWER.findall(part)
        if finals and (ans := _strip_math(finals[-1])):
            return ans
        said = [m.group(1) for m in ANSWER_IS.finditer(part)]
        if said and (ans := _strip_math(re.split(r"\.\s|\.$", said[-1])[0])):
            return ans
        if part is span and span.strip():
            return _strip_math(span)
    return None


# -- strict readings (protocol "strict": only where the format declares an answer) ----------------
def all_boxed(text: str) -> list[str]:
    """Contents of every closed `\\boxed{...}` / `\\fbox{...}`, in order (nested braces kept)."""
    out, i = [], 0
    while (m := _BOX.search(text, i)) is not None:
        j = m.end()
        while j < len(text) and text[j] == " ":
            j += 1
        i = m.end()
        if j >= len(text) or text[j] != "{":
            continue
        depth = 0
        for k in range(j, len(text)):
            if text[k] == "{" and text[k - 1] != "\\":
                depth += 1
            elif text[k] == "}" and text[k - 1] != "\\":
                depth -= 1
                if depth == 0:
                    out.append(text[j + 1:k].strip())
                    i = k + 1
                    break
    return out


def declared_answers(completion: str) -> list[str]:
    """The spans a completion declares as its answer, most explicit first: `<answer>` content,
    closed boxes, `####` lines, "the (final) answer is" phrases. Empty boxes and tags are skipped
    (they declare nothing); nothing is guessed from the rest of the text."""
    text = clean(completion)
    out = [c.strip() for c in ANSWER_TAG.findall(text) if c.strip()]
    out += [b for b in all_boxed(text) if b]
    out += [m.group(1).strip() for m in HASHES.finditer(text) if m.group(1).strip()]
    out += [m.group(1).strip() for m in ANSWER_IS.finditer(text) if m.group(1).strip()]
    return out


def strict_number(completion: str) -> str | None:
    """GSM8K under `strict`: the declared answers that hold a number must all hold the SAME
    number (two different boxed answers are no answer); no last-number fallback."""
    values = []
    for span in declared_answers(completion):
        inner = all_boxed(span)  # `<answer>\\boxed{5}</answer>`: the box inside the tag
        value = to_number(_unfrac(inner[-1] if inner else span).split("=")[-1])  # `3 + 4 = 7`: 7
        if value is not None:
            values.append(value)
    if not values or any(v != values[0] for v in values):
        return None
    return format_number(values[0])
