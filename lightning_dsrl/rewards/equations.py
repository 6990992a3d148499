"""The equations written in a free-text solution, for Div-Equ (the DIV paper's Eq. 5).

    extract_equations("She sold 48/2 = <<48/2=24>>24 clips, so $x + 24 = 72$.")  ->  ('48/2=24', 'x+24=72')

What counts as an equation, looked for in this order (each part found is blanked out of the
text before the next step):

1. a GSM8K calculator annotation ``<<48/2=24>>`` whose content holds ``=``;
2. in LaTeX math (``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``), each row (rows are split at
   ``\\\\``, a row starting with ``=`` continues the one before; ``&`` and ``\\begin{..}``/``\\end{..}``
   are dropped) that holds ``=`` with something on every side: ``$a + b = c$``,
   ``$x = \\frac{1}{2}$``. A ``$`` opens math only when a non-space follows it and closes it only
   when a non-space precedes it and no digit follows (Pandoc's rule), so GSM8K's prices
   (``$12 * 5 = $60``) stay plain text;
3. in the plain text left, on one line, a run of numbers (``1,250``, ``2.5``, ``$12``, ``20%``),
   operators (``+ - * / ^ × ÷``, and ``x`` standing alone between spaces), parentheses and spaces
   holding ``=``, with a number on every side and at least one operator: ``48/2 = 24``,
   ``(3 + 4) x 2 = 14``. ``Day 2 = 5`` (a word), ``24 = 24`` (no operator) and ``= 7`` are not.

Normal form: whitespace, ``$``, LaTeX spacing (``\\,``) and thousands separators removed;
``×``, ``\\times``, ``\\cdot`` and a lone ``x`` written ``*``; ``÷`` and ``\\div`` written ``/``.
A solution's equations are its *distinct* normal forms, in the order found: GSM8K writes every
step twice (``48/2 = <<48/2=24>>24``), and a repeated step is not a second equation.

Bounds, so that hostile text costs little (as in the verifiers): every scan is linear (``str.find``
and regexes without nested quantifiers); an arithmetic run longer than ``MAX_RUN_CHARS`` is no
solution step and is skipped; at most ``MAX_CANDIDATES`` annotations, as many math delimiters
and as many runs holding ``=`` are looked at (far more than any solution writes).
"""

from __future__ import annotations

import itertools
import re

__all__ = ["extract_equations", "normalize_equation"]

_ANNOTATION = re.compile(r"<<([^<>]*)>>")
_MATH_OPENER = re.compile(r"\$\$|\\\[|\\\(|\$")
_MATH_CLOSER = {"$$": "$$", "\\[": "\\]", "\\(": "\\)"}
_ROW = re.compile(r"\\\\")
_ENVIRONMENT = re.compile(r"\\(?:begin|end)\{[^{}]*\}|&")
MAX_RUN_CHARS = 500  # a longer arithmetic run is no solution step
MAX_CANDIDATES = 2000  # of each kind (annotations, math delimiters, runs holding "="): more is no solution
_RUN = re.compile(r"[0-9$%.,+\-*/^×÷()xX \t=]+")  # one character class: linear, no backtracking
_TOKEN = re.compile(
    r"(?P<num>\$?\d+(?:,\d{3})*(?:\.\d+)?%?)|(?P<op>[-+*/^×÷])|(?P<eq>=)|(?P<open>\()|(?P<close>\))"
    r"|(?P<space>[ \t]+)|(?P<word>.)",
)
_TIMES = re.compile(r"\\(?:times|cdot)(?![A-Za-z])")
_DIVIDE = re.compile(r"\\div(?![A-Za-z])")
_LATEX_SPACE = re.compile(r"\\[,;:! ]")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def normalize_equation(text: str) -> str:
    """The normal form of one equation (see the module docstring).

    >>> normalize_equation(r"$1,250 \\times 2 = 2,500")
    '1250*2=2500'
    >>> normalize_equation(r"a \\cdot b \\, = c ÷ 2")
    'a*b=c/2'
    """
    text = _DIVIDE.sub("/", _TIMES.sub("*", text)).replace("×", "*").replace("÷", "/").replace("$", "")
    text = _THOUSANDS.sub("", _LATEX_SPACE.sub("", text))
    return "".join(text.split())


def extract_equations(text: str) -> tuple[str, ...]:
    """The distinct equations written in ``text``, normalised, in the order found (see the module
    docstring for what counts).

    >>> extract_equations("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\\n48+24 = <<48+24=72>>72 in all.\\n#### 72")
    ('48/2=24', '48+24=72')
    >>> extract_equations(r"It costs $12 x 5 = $60. So $2y = 60$ and $y = 30$, \\[ y = \\frac{60}{2} \\]")
    ('2y=60', 'y=30', 'y=\\\\frac{60}{2}', '12*5=60')
    >>> extract_equations("Day 2 = 5 apples, 24 = 24, the answer is 7.")
    ()
    """
    found: list[str] = []
    annotations = itertools.islice(_ANNOTATION.finditer(text), MAX_CANDIDATES)
    found += [m.group(1) for m in annotations if _sides_filled(m.group(1))]
    text = _ANNOTATION.sub(" ", text)
    segments, text = _split_math(text)
    for segment in segments:
        rows: list[str] = []
        for row in _ROW.split(_ENVIRONMENT.sub(" ", segment)):
            if rows and row.lstrip().startswith("="):  # "x &= 2 \\cdot 3 \\\\ &= 6": one chain on two rows
                rows[-1] += row
            else:
                rows.append(row)
        found += [row for row in rows if _sides_filled(row)]
    found += _plain_equations(text)
    return tuple(dict.fromkeys(normalize_equation(e) for e in found))


def _sides_filled(text: str) -> bool:
    """``text`` holds ``=`` with something other than whitespace on every side of every ``=``."""
    sides = text.split("=")
    return len(sides) > 1 and all(side.strip() for side in sides)


def _split_math(text: str) -> tuple[list[str], str]:
    """The contents of the LaTeX math segments of ``text``, and the text with each segment blanked."""
    segments: list[str] = []
    kept: list[str] = []
    unclosed: set[str] = set()  # openers with no closer after some point: none later can close either
    i = 0
    for _ in range(MAX_CANDIDATES):
        m = _MATH_OPENER.search(text, i)
        if m is None:
            break
        opener, start = m.group(), m.end()
        if opener == "$":
            end = text.find("$", start)
            is_math = (end > start and not text[start].isspace() and not text[end - 1].isspace()
                       and not text[end + 1 : end + 2].isdigit())
        else:
            end = -1 if opener in unclosed else text.find(_MATH_CLOSER[opener], start)
            if end < 0:
                unclosed.add(opener)
            is_math = end >= 0
        if not is_math:  # plain text, opener included; the next search starts after it
            kept.append(text[i:start])
            i = start
            continue
        kept.append(text[i : m.start()] + " ")
        segments.append(text[start:end])
        i = end + (1 if opener == "$" else 2)
    kept.append(text[i:])
    return segments, "".join(kept)


def _plain_equations(text: str) -> list[str]:
    """Equations of step 3: the arithmetic runs of the plain text that hold ``=``."""
    out: list[str] = []
    runs = (m.group() for m in _RUN.finditer(text))
    for run in itertools.islice((r for r in runs if "=" in r and len(r) <= MAX_RUN_CHARS), MAX_CANDIDATES):
        tokens: list[tuple[str, str]] = []  # (kind, text) of the tokens of the current run
        for m in _TOKEN.finditer(run):
            kind, value = m.lastgroup, m.group()
            if value in ("x", "X") and tokens and tokens[-1][0] == "space" and run[m.end() : m.end() + 1] in (" ", "\t"):
                kind, value = "op", "*"  # "3 x 4": a multiplication sign
            if kind == "word":
                out += _run_equations(tokens)
                tokens = []
            elif kind != "space" or tokens:
                tokens.append((kind, value))
        out += _run_equations(tokens)
    return out


def _run_equations(run: list[tuple[str, str]]) -> list[str]:
    """The equations in one run of arithmetic tokens: split where two operands meet (``7 5``),
    ends trimmed, kept when ``=`` has a number on every side and an operator is present."""
    pieces: list[list[tuple[str, str]]] = [[]]
    last = None
    for kind, value in run:
        if kind == "space":
            continue
        if last in ("num", "close") and kind in ("num", "open"):
            pieces.append([])
        pieces[-1].append((kind, value))
        last = kind
    out = []
    for piece in pieces:
        piece = _trim(piece)
        kinds = [kind for kind, _ in piece]
        if "eq" not in kinds or "op" not in kinds:
            continue
        sides = "".join("|" if k == "eq" else ("n" if k == "num" else " ") for k in kinds).split("|")
        if all("n" in side for side in sides):
            out.append("".join(value for _, value in piece))
    return out


def _trim(piece: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``piece`` from its first number or ``(`` (or a ``-`` sign just before a number) to its last
    number or ``)``, without a ``(`` or ``)`` at the ends that has no partner (``(so 3 + 4 = 7)``)."""
    for _ in range(2):  # dropping an end parenthesis may leave an operator at that end
        kinds = [kind for kind, _ in piece]
        starts = [i for i, k in enumerate(kinds) if k in ("num", "open")]
        ends = [i for i, k in enumerate(kinds) if k in ("num", "close")]
        if not starts or not ends or starts[0] > ends[-1]:
            return []
        first, last = starts[0], ends[-1]
        if first > 0 and piece[first - 1][1] == "-" and kinds[first] == "num":
            first -= 1
        opens, closes = kinds[first : last + 1].count("open"), kinds[first : last + 1].count("close")
        while last >= first and kinds[last] == "close" and closes > opens:
            last, closes = last - 1, closes - 1
        while first <= last and kinds[first] == "open" and opens > closes:
            first, opens = first + 1, opens - 1
        piece = piece[first : last + 1]
    return piece
