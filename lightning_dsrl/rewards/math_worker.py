"""The math-verify worker process behind :class:`~lightning_dsrl.rewards.math.MathReward`.

Run as ``python -c <this file's source>`` (never imported by the package): it writes ``ready``
once its imports are done, then reads one JSON
request per line on stdin, ``{"id": int, "gold": "...", "pred": "..."}`` (LaTeX strings, the
contents of a ``\\boxed{}``), and writes one JSON line back, ``{"id": int, "correct": bool,
"answer": str | null}``, with the request's id (the parent discards replies to calls it gave up on).

A separate process, because sympy can spend unbounded time on an expression such as
``9^{9^{9^{9}}}``, in C code that no signal interrupts: the parent waits at most its timeout for
each answer and kills this process when it is late. math-verify's own ``signal.alarm`` timeouts
are therefore turned off here (they also only work in a main thread). No ``__future__`` import:
the parent puts a line before this source.
"""

import json
import logging
import sys


def _serve() -> None:
    # math-verify warns once that its own timeouts are off; the parent's kill is the timeout
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.ERROR)
    import sympy
    from math_verify import LatexExtractionConfig, parse, verify

    extraction = [LatexExtractionConfig()]
    gold_cache: dict[str, list] = {}
    sys.stdout.write("ready\n")
    sys.stdout.flush()

    def parsed(text: str) -> list:
        return parse("\\boxed{" + text + "}", extraction_config=extraction, parsing_timeout=None)

    def normal_form(value) -> str | None:
        """Equal strings for equal answers: ``0.5``, ``\\frac{1}{2}`` and ``x = 1/2`` all give ``1/2``."""
        if isinstance(value, sympy.Eq) and isinstance(value.lhs, sympy.Symbol):
            value = value.rhs
        if isinstance(value, sympy.Float):
            value = sympy.nsimplify(value, rational=True)
        text = str(value)
        return text if len(text) <= 200 else None

    for line in sys.stdin:
        request = json.loads(line)
        gold = gold_cache.get(request["gold"])
        if gold is None:
            gold = parsed(request["gold"])
            if len(gold_cache) > 4096:
                gold_cache.clear()
            gold_cache[request["gold"]] = gold
        pred = parsed(request["pred"])
        correct = bool(gold and pred and verify(gold, pred, timeout_seconds=None))
        answer = normal_form(pred[0]) if pred and not isinstance(pred[0], str) else None
        sys.stdout.write(json.dumps({"id": request.get("id"), "correct": correct, "answer": answer}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
