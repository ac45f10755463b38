"""BatchNorm statistics during mask training: CALM's defaults with `buffer_refresh_every` 0
(statistics estimated once per step, for the step's starting merge) against N (re-estimated
for the current soft merge every N epochs), on one suite, one load and one pseudo-label pass:

    python -m bench.buffer_refresh --suite photos [--every 0 10] [--out PATH]

Prints per variant the test accuracy (table only), the normalized accuracy and the held-out
pseudo-label agreement — the label-free score the choice of default rests on. Writes
bench/results/buffer_refresh_<suite>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.quality_runner import Runner, table
from bench.suites import build_suite, suite_names
from calm.loading import load_context, pseudo_label_pass
from calm.run_options import RunOptions
from calm.spec import CalmOptions, MergeSpec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=suite_names(), default="photos")
    p.add_argument("--every", type=int, nargs="+", default=[0, 10])
    p.add_argument("--cache", type=Path, default=Path("bench/cache"))
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    suite = build_suite(a.suite, "bench", a.cache)
    spec = MergeSpec.model_validate(suite.merge_spec("calm"))
    loaded = load_context(spec, RunOptions(device="cpu"), {})
    pseudo_label_pass(loaded, CalmOptions())
    runner = Runner(loaded)
    for every in a.every:
        runner.method(f"calm refresh={every}", "calm", {"buffer_refresh_every": every})
    runner.finish()
    tasks = [t.name for t in spec.tasks]
    print(table(runner.results, tasks))
    out = a.out or Path(f"bench/results/buffer_refresh_{a.suite}.json")
    out.write_text(json.dumps({"suite": a.suite, "methods": runner.results}, indent=2, sort_keys=True))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
