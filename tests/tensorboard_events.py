"""Reads a run folder's TensorBoard event files with the tensorboard package
and checks them against the folder's metrics.jsonl: every number of every
line as `train/NAME` at the line's step and wall time, exactly once, and no
other step; with `--score TAG=VALUE@STEP`, that evaluation score once too,
and no other tag. Run by tests/pretrain.rs and tests/experiment.rs.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing import event_accumulator as ea

PRETRAIN = "events.out.tfevents.pretrain"
SCORES = "events.out.tfevents.scores"


def same(got, want):
    """Equal as TensorBoard stores scalars (f32), NaN equal to NaN."""
    want = np.float32(math.nan if want is None else want)
    return (math.isnan(got) and math.isnan(want)) or np.float32(got) == want


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir", type=Path)
    parser.add_argument("--score", action="append", default=[], help="TAG=VALUE@STEP")
    args = parser.parse_args()

    metrics = args.dir / "metrics.jsonl"
    lines = [json.loads(l) for l in metrics.read_text().splitlines()] if metrics.exists() else []
    files = sorted(p.name for p in args.dir.iterdir() if "tfevents" in p.name)
    want_files = ([PRETRAIN] if metrics.exists() else []) + ([SCORES] if args.score else [])
    assert files == want_files, f"event files {files}, want {want_files}"

    # Without the purge a step written twice is read twice: the default
    # purge would hide the duplicate by dropping the older copy.
    acc = ea.EventAccumulator(
        str(args.dir), size_guidance={ea.SCALARS: 0}, purge_orphaned_data=False
    )
    acc.Reload()
    by_tag = {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}

    steps = [line["step"] for line in lines]
    assert len(set(steps)) == len(steps), f"metrics.jsonl repeats a step: {steps}"
    train_tags = {f"train/{k}" for line in lines for k in line if k not in ("step", "wall_time")}
    for tag in train_tags:
        events = by_tag.get(tag, [])
        logged = [e.step for e in events]
        assert logged == steps, f"{tag}: steps {logged}, metrics.jsonl has {steps}"
        for event, line in zip(events, lines):
            want = line[tag.removeprefix("train/")]
            assert same(event.value, want), f"{tag} at {event.step}: {event.value} != {want}"
            assert event.wall_time == line["wall_time"], f"{tag} at {event.step}: wall time"

    score_tags = set()
    for spec in args.score:
        tag, rest = spec.split("=", 1)
        value, step = rest.rsplit("@", 1)
        score_tags.add(tag)
        got = [(e.step, e.value) for e in by_tag.get(tag, [])]
        assert len(got) == 1 and got[0][0] == int(step), f"{tag}: {got}, want one at step {step}"
        assert same(got[0][1], float(value)), f"{tag}: {got[0][1]} != {value}"
    extra = set(by_tag) - train_tags - score_tags
    assert not extra, f"tags beyond metrics.jsonl and the scores: {sorted(extra)}"
    print(f"{args.dir.name}: {len(train_tags)} scalars at each of {len(steps)} steps and "
          f"{len(score_tags)} scores, each once")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        sys.exit(f"tensorboard_events.py: {e}")
