"""Per-module counts of the last `make mutate` run, read from mutmut's result files.

    python tests/mutation_counts.py [--survivors]

Prints, for each module of the mutation scope: mutants generated, killed, survived, timed out,
no tests (no selected test runs the function), and the rest; --survivors lists the surviving
mutants' names (inspect one with `mutmut show NAME`). Not a test: pytest collects test_*.py only.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

COLUMNS = ("generated", "killed", "survived", "timeout", "no tests", "not checked", "other")


def counts(root: Path = Path("mutants")) -> dict[str, tuple[Counter, list[str]]]:
    out = {}
    for meta in sorted(root.glob("charlm/**/*.py.meta")):
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        c, survivors = Counter(), []
        for name, code in codes.items():
            status = status_by_exit_code[code]
            c["generated"] += 1
            c[status if status in COLUMNS else "other"] += 1
            if status == "survived":
                survivors.append(name)
        module = meta.relative_to(root / "charlm").as_posix().removesuffix(".py.meta")
        out[module.replace("/", ".")] = (c, sorted(survivors))
    return out


def main() -> None:
    table = counts()
    if not table:
        sys.exit("no mutmut results under mutants/: run `make mutate` first")
    print(f"{'module':<24}" + "".join(f"{c:>12}" for c in COLUMNS) + f"{'killed %':>10}")
    total = Counter()
    for module, (c, _) in table.items():
        total.update(c)
        checked = c["killed"] + c["survived"] + c["timeout"]
        score = f"{100 * (c['killed'] + c['timeout']) / checked:.1f}" if checked else "-"
        print(f"{module:<24}" + "".join(f"{c[k]:>12}" for k in COLUMNS) + f"{score:>10}")
    checked = total["killed"] + total["survived"] + total["timeout"]
    print(f"{'total':<24}" + "".join(f"{total[k]:>12}" for k in COLUMNS)
          + f"{100 * (total['killed'] + total['timeout']) / max(checked, 1):>10.1f}")
    if "--survivors" in sys.argv:
        for _, survivors in table.values():
            for name in survivors:
                print(name)


if __name__ == "__main__":
    main()
