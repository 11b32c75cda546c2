"""`--repair`: keep the fewest layers in a higher precision that make a failed gate pass.

What NNCF's accuracy-aware quantization and Polygraphy's `debug precision` do, for this toolkit's graphs:

1. **Rank** the layers by the error each adds (toolkit/layerwise.py: relative error power of its output minus the
   largest of its inputs', a first-order proxy measured in one pass of `toolkit debug`), largest first.
2. **Search** the shortest prefix of that ranking whose repaired file passes the gate: the prefix doubles (1, 2, 4,
   ...) until a trial passes, then bisects between the last failure and that pass. Each trial writes the file and
   judges it with the gate's own metrics on the gate's own images, so the ranking only orders the search; the
   verdict is never the proxy's. About 2 log2(n) trials for n ranked layers (ViT-B/16: 74 GEMMs, at most 13).
   Assumes keeping more layers is not worse, which the final trial verifies for the prefix it returns.

The callers say what "keep" means (calibration/repair.py: float or 7-bit weights for int8; export/core.py: fp32
for fp16) and seal the result in the manifest with its ranking and trials.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def fewest(ranked: list[str], trial: Callable[[list[str]], dict], log=print, what: str = "layers") -> dict:
    """The shortest prefix of `ranked` for which `trial(prefix)["passed"]` (the unrepaired file, prefix 0, is known
    to fail). -> {"kept": prefix or None when even all of them fail, "result": that trial's result, "trials": every
    trial in the order run, with k, passed, seconds and the trial's own "summary"}."""
    done: dict[int, dict] = {}
    order: list[dict] = []

    def run(k: int) -> bool:
        if k not in done:
            t0 = time.perf_counter()
            res = trial(ranked[:k])
            done[k] = res
            rec = {"k": k, "passed": bool(res["passed"]), "seconds": round(time.perf_counter() - t0, 1),
                   **({"summary": res["summary"]} if "summary" in res else {})}  # fmt: skip
            order.append(rec)
            log(f"repair: {k} of {len(ranked)} {what} kept: {'passes' if rec['passed'] else 'fails'}"
                f"{' (' + res['summary'] + ')' if res.get('summary') else ''}")  # fmt: skip
        return done[k]["passed"]

    if not ranked:
        return {"kept": None, "result": None, "trials": order}
    lo, hi, k = 0, None, 1
    while k < len(ranked):
        if run(k):
            hi = k
            break
        lo, k = k, 2 * k
    if hi is None:
        if not run(len(ranked)):
            return {"kept": None, "result": done[len(ranked)], "trials": order}
        hi = len(ranked)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if run(mid):
            hi = mid
        else:
            lo = mid
    return {"kept": ranked[:hi], "result": done[hi], "trials": order}
