"""Every figure of one GPU check in one markdown file: `python benchmarks/gpu_report.py OUT`.

Reads what `scripts/gpu_check.sh` left in OUT (stages.jsonl, tests.xml, step_time.jsonl,
trials.jsonl, gpu_check.log) and writes OUT/gpu_check.md: the machine, each stage's outcome, the
test counts, and the step-time and trials-per-device tables in benchmarks/README.md's form, with
the issue's goals marked met or missed. A stage that failed or timed out shows as such; its rows
are simply absent.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from datetime import date
from pathlib import Path

# The goals of the GPU check (ViT-B-16 with bf16 autocast, batch 32 + 32; RN50 likewise).
GOALS = {
    "ViT-B-16": {"trainer_images_per_s": 2500, "trainer_mfu": 0.35, "bare_over_trainer": 0.9},
    "RN50": {"trainer_images_per_s": 4000},
}


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def environment_lines(log: Path) -> list[str]:
    """The environment stage's printout (python, torch, GPU, where each import resolved)."""
    if not log.is_file():
        return []
    lines, inside = [], False
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("=== environment (limit"):
            inside = True
        elif line.startswith("=== environment:"):
            break
        elif inside:
            lines.append(line)
    return lines


def test_counts(path: Path) -> str:
    if not path.is_file():
        return "no test report (the stage did not run or did not finish)"
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    total, failures, errors, skipped = (int(suite.get(k, 0)) for k in
                                        ("tests", "failures", "errors", "skipped"))
    text = (f"{total - failures - errors - skipped} passed, {failures} failed, {errors} errors, "
            f"{skipped} skipped")
    problems = []
    for case in suite.iter("testcase"):
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                message = (node.get("message") or "").splitlines()[0][:160] if node.get(
                    "message") else ""
                problems.append(f"- {kind}: `{case.get('name')}`: {message}")
    return "\n".join([text, *problems])


def fmt(value, digits: int = 1, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.{digits}f} %" if percent else f"{value:,.{digits}f}"


def goal_marks(row: dict) -> str:
    goals = GOALS.get(row["model"], {}) if row.get("precision") == "amp_bf16" and \
        "FixMatch" not in row["batch"] else {}
    marks = []
    for key, target in goals.items():
        value = row.get(key)
        met = value is not None and value >= target
        shown = f"{100 * target:.0f} %" if key == "trainer_mfu" else f"{target:,}"
        marks.append(f"{key} >= {shown}: {'met' if met else 'MISSED'}")
    return "; ".join(marks)


def step_table(rows: list[dict]) -> list[str]:
    lines = ["| model | precision | batch | images/s | bare ms | trainer ms | bare/trainer | "
             "MFU (trainer / bare) | TFLOP/s | peak GiB (trainer / bare) | RST share | goals |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']}, {r['image_size']} px | {r['precision']} | {r['batch']} | "
            f"{fmt(r['trainer_images_per_s'], 0)} | {fmt(r['bare_ms'])} | "
            f"{fmt(r['trainer_ms'])} | **{r['bare_over_trainer']:.2f}** | "
            f"{fmt(r['trainer_mfu'], 1, True)} / {fmt(r['bare_mfu'], 1, True)} | "
            f"{fmt(r['trainer_tflop_per_s'])} | {fmt(r['trainer_peak_gib'], 2)} / "
            f"{fmt(r['bare_peak_gib'], 2)} | {fmt(r['rst_reset_share'], 2, True)} | "
            f"{goal_marks(r)} |")
    return lines


def trials_table(rows: list[dict]) -> list[str]:
    lines = ["| model | precision | trials per GPU | images/s together | x of 1 | peak GiB per "
             "trial (reserved) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']}, {r['image_size']} px | {r['precision']} | {r['trials']} "
                     f"| {fmt(r['images_per_s'], 0)} | {r['over_first']:.2f}x | "
                     f"{r['peak_gib_per_trial']:.2f} |")
    return lines


def report(out: Path) -> str:
    stages = read_jsonl(out / "stages.jsonl")
    steps, trials = read_jsonl(out / "step_time.jsonl"), read_jsonl(out / "trials.jsonl")
    machine = (steps or trials or [{}])[0].get("machine", "unknown")
    lines = [f"### GPU check, {date.today().isoformat()}: {machine}", "",
             "Command: `bash scripts/gpu_check.sh` (`make gpu-check`); every figure below is "
             "from that one run.", "", "```", *environment_lines(out / "gpu_check.log"), "```",
             "", "| stage | outcome | seconds (limit) |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['outcome']} (rc {s['rc']}) | {s['seconds']} "
              f"({s['limit']}) |" for s in stages]
    lines += ["", "**Tests** (`pytest -m cuda tests/cuda`): " + test_counts(out / "tests.xml"),
              "", "**Trainer step vs a bare open_clip step** (`benchmarks/step_time.py`, random "
              "weights; images/s counts the views the tower encodes; MFU against the "
              "datasheet's dense peak, bf16 or plain fp32 — fp32 convolutions run as TF32 by "
              "default, so an fp32 ResNet's MFU can pass 100 %):", ""]
    lines += step_table(steps) if steps else ["(no rows: the stage failed or did not run)"]
    lines += ["", "**Several trainers on one GPU** (`benchmarks/trials_per_device.py`):", ""]
    lines += trials_table(trials) if trials else ["(no rows: the stage failed or did not run)"]
    return "\n".join(lines) + "\n"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/gpu-check")
    text = report(out)
    (out / "gpu_check.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
