"""Answer checking: one checker for selecting training samples and for evaluating models.

numeric  the completion's answer equals the reference as a number (" 143" == "143" == "143.0" == "1,43e2"...).
exact    the normalised completion, or the normalised answer it states after a marker ("The answer is
         Paris." states "paris"), equals the normalised reference.
contains the normalised reference appears in the normalised completion as whole words.
Normalising lower-cases, drops punctuation and articles, and folds white space.

Which number a completion answers with (answer_number), in order:
  1. the last \\boxed{...};
  2. after an answer marker ("the answer is", "answer:", "result =", "final answer"), the last marker that
     is followed by a number in its sentence: there, the number after the sentence's last "=" ("The answer
     is 10 - 3 = 7" answers 7), else its first number that is not negated ("The answer isn't 5, it's 6"
     answers 6; "The answer is 5, not 6" answers 5);
  3. otherwise the last number that is not negated ("12 + 5 = 17, not 16" answers 17).
Numbers are what people write: signs (a Unicode minus too; "10-3" is 10 and 3), thousands with commas
in groups of three ("1,234"; "1,43" is 1 and 43) or spaces ("1 000 000"), decimals, fractions ("3/4",
LaTeX \\frac{3}{4}), scientific notation ("1e3", "1.5e-3", "3 x 10^4") and, where a span has no digits,
number words ("twelve", "twenty-one", "one hundred and five", "minus four").
"""
from __future__ import annotations

import re
import string

CHECKERS = ("numeric", "exact", "contains")

_INT = r"\d{1,3}(?:,\d{3})+(?![\d,])|\d{1,3}(?: \d{3})+(?!\d)|\d+"
_NUMBER = re.compile(
    r"(?<![\w.)\]])(?P<sign>[-+]\s?)?"  # a sign only where nothing it could be subtracting from stands before
    r"(?P<int>(?:" + _INT + r")(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?)(?![\d/]))?"  # a fraction
    r"(?:[eE](?P<exp>[-+]?\d+))?"  # scientific notation
    r"(?:\s*(?:x|\*|×)\s*10\s*\^\s*(?P<pow>[-+]?\d+))?"  # 3 x 10^4
    r"(?![\w])")
_MARKER = re.compile(r"\b(?:final answer|answer|result|solution)\b(?:\s+(?:is|was|would be|will be|should be|"
                     r"equals|isn't|is not|wasn't|=)|\s*[:=])", re.IGNORECASE)
_NEGATED_BEFORE = re.compile(r"(?:\bnot|n't|\bnever|\binstead of|\brather than|\bnor|\bno longer)"
                             r"(?:\s+(?:be|equal|equals|equal to|exactly|just|quite|really|actually))*[\s:]*$",
                             re.IGNORECASE)
_NEGATED_AFTER = re.compile(r"^\s*(?:is|was|would be)\s+(?:wrong|incorrect|a mistake|not (?:right|correct|it))",
                            re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
_ARTICLES = re.compile(r"\b(a|an|the)\b")

_ONES = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                    "fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
_WORD = "|".join(sorted([*_ONES, *_TENS, *_SCALES], key=len, reverse=True))
_WORDS = re.compile(rf"\b(?P<neg>(?:minus|negative)\s+)?(?P<body>(?:a\s+(?=hundred|thousand|million))?(?:{_WORD})"
                    rf"(?:(?:\s+and\s+|[\s-]+)(?:{_WORD}))*)\b", re.IGNORECASE)
_SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")


def _clean(text: str) -> str:
    """Model-written maths as plain text: Unicode signs and spaces, LaTeX fractions, powers and boxes."""
    text = str(text).replace("\u2212", "-").replace("\u2013", "-").replace("\u00d7", "x").replace("\u22c5", "*")
    for space in ("\u00a0", "\u2009", "\u202f", "\\,", "\\ ", "\\!"):
        text = text.replace(space, " ")
    text = re.sub(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"(\1)/(\2)", text)
    text = re.sub(r"\((\s*[-+]?[\d.]+\s*)\)/\((\s*[\d.]+\s*)\)", r"\1/\2", text)  # (3)/(4) -> 3/4
    text = text.replace("\\times", "x").replace("\\cdot", "*").replace("\\left", "").replace("\\right", "")
    text = re.sub(r"\^\{([-+]?\d+)\}", r"^\1", text)
    text = re.sub(r"10([⁰¹²³⁴⁵⁶⁷⁸⁹⁻]+)", lambda m: "10^" + m.group(1).translate(_SUPERSCRIPT), text)
    return text.replace("$", "").replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")


def _value(m: re.Match) -> float:
    body = m.group("int").replace(",", "").replace(" ", "")
    value = float(body)
    if m.group("den"):
        den = float(m.group("den"))
        value = value / den if den else float("nan")
    if m.group("exp"):
        value *= 10.0 ** int(m.group("exp"))
    if m.group("pow"):
        value *= 10.0 ** int(m.group("pow"))
    return -value if (m.group("sign") or "").strip() == "-" else value


def _words_value(body: str) -> float:
    total = current = 0
    for w in re.split(r"[\s-]+", body.lower()):
        if w in ("and", "a"):
            continue
        if w in _ONES:
            current += _ONES[w]
        elif w in _TENS:
            current += _TENS[w]
        elif w == "hundred":
            current = max(current, 1) * 100
        else:
            total += max(current, 1) * _SCALES[w]
            current = 0
    return float(total + current)


def numbers(text: str, words: bool = False) -> list[tuple[float, int, int, bool]]:
    """Every number in already-cleaned text -> [(value, start, end, negated)]; number words only if asked."""
    if words:
        found = [(-_words_value(m.group("body")) if m.group("neg") else _words_value(m.group("body")), m.start(),
                  m.end()) for m in _WORDS.finditer(text)]
    else:
        found = [(_value(m), m.start(), m.end()) for m in _NUMBER.finditer(text)]
    out = []
    for value, start, end in found:
        sentence_start = max([0] + [e.end() for e in _SENTENCE_END.finditer(text, 0, start)])
        negated = bool(_NEGATED_BEFORE.search(text[sentence_start:start])) or bool(_NEGATED_AFTER.match(text[end:]))
        out.append((value, start, end, negated))
    return out


def _in_clause(text: str, words: bool) -> float | None:
    """The number a clause after an answer marker states: after its last '=', else its first one not negated."""
    cut = text.rfind("=")
    found = [n for n in numbers(text[cut + 1:] if cut >= 0 else text, words) if not n[3]]
    return found[0][0] if found else None


def _stated(text: str, words: bool) -> float | None:
    boxed = re.findall(r"\\boxed\s*\{([^{}]*)\}", text)
    if boxed:
        found = numbers(boxed[-1], words)
        if found:
            return found[-1][0]
    for marker in reversed(list(_MARKER.finditer(text))):
        rest = text[marker.end():]
        end = _SENTENCE_END.search(rest.lstrip())
        sentence = rest.lstrip()[:end.start()] if end and end.start() > 0 else rest
        value = _in_clause(sentence, words)
        if value is not None:
            return value
    found = [n for n in numbers(text, words) if not n[3]]
    return found[-1][0] if found else None


def answer_number(text: str) -> float | None:
    """The number a completion gives as its answer (see the module docstring); None if it gives none."""
    text = _clean(text)
    value = _stated(text, words=False)
    return value if value is not None else _stated(text, words=True)


def last_number(text: str) -> float | None:
    found = numbers(_clean(text))
    return found[-1][0] if found else None


def parse_number(text: str) -> float | None:
    """A reference answer as a number, when the whole text is one number ("1,234", "3/4", "1e3"), else None."""
    text = _clean(str(text)).strip()
    m = _NUMBER.fullmatch(text)
    if m:
        return _value(m)
    w = _WORDS.fullmatch(text)
    return (-1 if w.group("neg") else 1) * _words_value(w.group("body")) if w else None


def normalise(text: str) -> str:
    text = str(text).lower()
    text = "".join(" " if ch in string.punctuation else ch for ch in text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def stated_text(text: str) -> str:
    """The answer a completion states after its last marker (to the end of that sentence), else the whole text."""
    markers = list(_MARKER.finditer(str(text)))
    if not markers:
        return str(text)
    rest = str(text)[markers[-1].end():].lstrip()
    end = _SENTENCE_END.search(rest)
    return rest[:end.start()] if end and end.start() > 0 else rest


def answer_key(completion: str) -> str | None:
    """What a completion answers, comparable across samples (self-consistency): the number as a canonical
    string when it states one, else its stated text normalised; None for an empty answer."""
    value = answer_number(completion)
    if value is not None:
        return f"{round(value, 9):g}"
    text = normalise(stated_text(completion))
    return text or None


def pick_checker(reference: str, requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    return "numeric" if parse_number(reference) is not None else "exact"


def is_correct(completion: str, reference: str, checker: str = "auto") -> bool:
    checker = pick_checker(reference, checker)
    if checker == "numeric":
        ref, got = parse_number(reference), answer_number(completion)
        return ref is not None and got is not None and abs(ref - got) <= 1e-6 * max(1.0, abs(ref))
    ref, got = normalise(reference), normalise(completion)
    if checker == "exact":
        return ref == got or (bool(ref) and ref == normalise(stated_text(completion)))
    if checker == "contains":
        return bool(ref) and f" {ref} " in f" {got} "
    raise ValueError(f"unknown checker {checker}")
