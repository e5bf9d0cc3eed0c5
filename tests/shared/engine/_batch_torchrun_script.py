"""Toy batch job for the runner tests, and a script running it (in a subprocess, or under ``torchrun``).

Usage: ``python _batch_torchrun_script.py IN_DIR OUT_DIR [--sleep S] [--dist]``. The job upper-cases text
files; a file containing ``BAD`` fails. The script prints one JSON line with its rank's summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medvit.shared.engine.batch import BatchJob, common_root, output_relpath, resolve_inputs, run_batch
from medvit.shared.errors import DataError


class UpperJob(BatchJob):
    """Reads a text file and writes its upper-cased copy to ``<name>.out.txt`` (sub-folders mirrored)."""

    description = "upper"

    def __init__(
        self,
        root: Path,
        *,
        load_sleep: float = 0.0,
        process_sleep: float = 0.0,
        fail_with: type[Exception] = DataError,
        fail_in: str = "process",
    ) -> None:
        self.root = root
        self.load_sleep = load_sleep
        self.process_sleep = process_sleep
        self.fail_with = fail_with
        self.fail_in = fail_in

    def outputs_for(self, item: Path) -> list[Path]:
        return [output_relpath(item, self.root, ".out.txt")]

    def load(self, item: Path) -> str:
        time.sleep(self.load_sleep)
        text = item.read_text()
        if self.fail_in == "load" and "BAD" in text:
            raise self.fail_with(f"{item.name}: contains BAD")
        return text

    def process(self, item: Path, loaded: str, tmp_outputs: list[Path]) -> Mapping[str, Any]:
        if self.fail_in == "process" and "BAD" in loaded:
            raise self.fail_with(f"{item.name}: contains BAD")
        upper = loaded.upper()
        # Written in two halves with a pause, so that a kill is likely to land on a half-written temp.
        with open(tmp_outputs[0], "w") as f:
            f.write(upper[: len(upper) // 2])
            f.flush()
            time.sleep(self.process_sleep / 2)
            f.write(upper[len(upper) // 2 :])
        time.sleep(self.process_sleep / 2)
        return {"chars": len(loaded)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("inp")
    parser.add_argument("out")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--dist", action="store_true", help="initialise the gloo process group (torchrun)")
    args = parser.parse_args(argv)
    if args.dist:
        from medvit.shared.engine import distributed

        distributed.init_distributed("cpu")
    inputs = resolve_inputs(args.inp, [".txt"])
    summary = run_batch(UpperJob(common_root(inputs), process_sleep=args.sleep), inputs, args.out, quiet=True)
    if args.dist:
        from medvit.shared.engine import distributed

        rank = distributed.rank()
        distributed.cleanup()
    else:
        rank = 0
    print(json.dumps({"rank": rank, "ok": summary.ok, "skipped": summary.skipped, "error": summary.error}))
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
