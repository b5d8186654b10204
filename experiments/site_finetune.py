"""A site fine-tunes a model on half of its patients; both models are judged on the other half.

For each site (BUS-BRA's GE Logiq 7 patients; BUSI by near-duplicate group): the patients are split
in two halves (by a hash of their name, so the split is stable); the first half becomes a CSV
datalist (image, mask, label, patient, scanner: what a site has) and is given to exactly

    mffmt train --data SITE.csv --init-model MODEL --output RUN

(timed; nothing else on the command line), then the parent and the new model are judged on the
second half through :class:`MFFMTCore.inference.predictor.Predictor` (``mffmt predict``'s own
code: imaging region, input size, each model's temperature and lesion-present rule) with
:func:`MFFMTCore.evaluation.site_report.site_report`: AUC, sensitivity/specificity at each model's
operating point, Dice, lesion-free frames given a lesion, ECE, with patient-bootstrap intervals.

Every step writes its result before the next starts, and a finished step is not redone (run it again
after a stop). Example::

    nice python experiments/site_finetune.py --busbra ../shared/data/busbra --busi ../shared/data/busi \\
        --output runs/site_finetune
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from MFFMTCore.base.run_folder import RunFolder
from MFFMTCore.data import read_busbra, read_busi
from MFFMTCore.data.records import SampleRecord
from MFFMTCore.evaluation.site_report import site_report
from MFFMTCore.files import write_json_atomic
from MFFMTCore.inference.predictor import Predictor
from MFFMTCore.model_completion import score_records
from MFFMTCore.model_file import read_model_info

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "MFFMTCore" / "models" / "mffmt18_default.safetensors"


def halves(records: list[SampleRecord]) -> tuple[list[SampleRecord], list[SampleRecord]]:
    """(fine-tuning half, judging half) by patient."""
    def first(record: SampleRecord) -> bool:
        return int(hashlib.sha256(record.group_key().encode()).hexdigest(), 16) % 2 == 0

    return [r for r in records if first(r)], [r for r in records if not first(r)]


def write_site_csv(records: list[SampleRecord], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", "label", "patient", "scanner"])
        for r in records:
            writer.writerow([r.image, ";".join(r.masks), r.label or "", r.group_key(), r.scanner or ""])


def judge(model: Path, records: list[SampleRecord]) -> tuple[list, dict]:
    info = read_model_info(model)
    scored = score_records(Predictor(model), records)
    return scored.scores, {"model": str(model), "temperature": info.temperature,
                           "lesion_decision": info.lesion_decision}


def site(name: str, records: list[SampleRecord], model: Path, out: Path) -> dict:
    folder = out / name
    train, test = halves(records)
    datalist = folder / "site.csv"
    if not datalist.exists():
        write_site_csv(train, datalist)
    run = folder / "run"
    timing = folder / "train_time.json"
    if not timing.exists():
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "MFFMTCore", "train", "--data", str(datalist), "--init-model",
                        str(model), "--output", str(run), "--overwrite", "--progress", "none"], check=True)
        write_json_atomic(timing, {"seconds": time.monotonic() - started, "frames": len(train)})
    result = folder / "judged.json"
    if not result.exists():
        parent_scores, parent = judge(model, test)
        new_scores, new = judge(RunFolder(run).model, test)
        report = site_report(parent_scores, new_scores, {"parent": parent, "new": new})
        report["fine_tuning"] = json.loads(timing.read_text())
        report["judged_frames"] = len(test)
        write_json_atomic(result, report)
    return json.loads(result.read_text())


def table(reports: dict[str, dict]) -> str:
    lines = ["| site | model | AUC | sensitivity / specificity | Dice | lesion-free given a lesion | ECE | fine-tuning |",
             "|---|---|---|---|---|---|---|---|"]
    for name, report in reports.items():
        for key in ("parent", "new"):
            m = report[key]["metrics"]

            def cell(metric: str, percent: bool = False, m: dict = m) -> str:
                entry = m[metric]
                if entry["value"] is None:
                    return "n/a"
                scale = 100 if percent else 1
                low, high = entry["low"], entry["high"]
                band = f" ({scale * low:.{0 if percent else 3}f}-{scale * high:.{0 if percent else 3}f})" \
                    if low is not None else ""
                return f"{scale * entry['value']:.{0 if percent else 3}f}{'%' if percent else ''}{band}"

            tuning = report["fine_tuning"]
            lines.append(f"| {name} ({report['patients']} patients, {report['judged_frames']} frames) | {key} | "
                         f"{cell('auc')} | {cell('sensitivity')} / {cell('specificity')} | {cell('dice')} | "
                         f"{cell('lesion_free_flagged', True)} | {cell('ece')} | "
                         + (f"{tuning['seconds']:.0f} s on {tuning['frames']} frames |" if key == "new" else "- |"))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busbra", required=True)
    parser.add_argument("--busi", required=True)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--sites", nargs="+", default=["logiq7", "busi"], choices=["logiq7", "busi"])
    args = parser.parse_args()
    sources = {"logiq7": lambda: [r for r in read_busbra(args.busbra) if r.scanner == "GE Logiq 7 @10-14MHz"],
               "busi": lambda: read_busi(args.busi)}
    reports = {}
    for name in args.sites:
        reports[name] = site(name, sources[name](), args.model, args.output)
        text = table(reports)
        (args.output / "table.md").write_text(text + "\n", encoding="utf-8")
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
