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

The default model was trained on both sites, so that arm is not unseen. ``--train-without-site`` runs
the honest arm instead: a model is first trained WITHOUT the site (every other image of BUSI and
BUS-BRA) with the default recipe, ``mffmt train --config configs/default_model.json --data OTHERS.csv``
(``--epochs`` shortens it), judged zero-shot on the judging half, and then fine-tuned on the
fine-tuning half with the same exact command as above and judged again.

Every step writes its result before the next starts, and a finished step is not redone (run it again
after a stop; an interrupted training resumes from its checkpoint). Example::

    nice python experiments/site_finetune.py --busbra ../shared/data/busbra --busi ../shared/data/busi \\
        --output runs/site_finetune
    nice taskset -c 0 python experiments/site_finetune.py --busbra ../shared/data/busbra \\
        --busi ../shared/data/busi --output runs/site_finetune --sites busi --train-without-site --epochs 6
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from MFFMTCore.base.devices import available_cores
from MFFMTCore.base.run_folder import RunFolder
from MFFMTCore.data import read_busbra, read_busi
from MFFMTCore.data.records import SampleRecord
from MFFMTCore.evaluation.model_fit import FrameScore
from MFFMTCore.evaluation.site_report import site_report
from MFFMTCore.files import write_json_atomic
from MFFMTCore.inference.predictor import Predictor
from MFFMTCore.model_completion import score_records
from MFFMTCore.model_file import read_model_info

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "MFFMTCore" / "models" / "mffmt18_default.safetensors"
DEFAULT_RECIPE = ROOT / "configs" / "default_model.json"
LOGIQ7 = "GE Logiq 7 @10-14MHz"
#: The sites and their names in the table.
SITES = {"logiq7": "GE Logiq 7", "busi": "BUSI"}
#: Row names of each arm's two models in the table.
ARMS = {"default": ("default model", "default model fine-tuned"),
        "without_site": ("trained without the site (zero-shot)", "that model fine-tuned")}


def halves(records: list[SampleRecord]) -> tuple[list[SampleRecord], list[SampleRecord]]:
    """(fine-tuning half, judging half) by patient."""
    def first(record: SampleRecord) -> bool:
        return int(hashlib.sha256(record.group_key().encode()).hexdigest(), 16) % 2 == 0

    return [r for r in records if first(r)], [r for r in records if not first(r)]


def write_site_csv(records: list[SampleRecord], path: Path) -> None:
    """What a site has: image, mask, label, patient, scanner."""
    _write_csv(path, ["image", "mask", "label", "patient", "scanner"],
               ([r.image, ";".join(r.masks), r.label or "", r.group_key(), r.scanner or ""] for r in records))


def write_training_csv(records: list[SampleRecord], path: Path) -> None:
    """Everything the folder readers give (box, BI-RADS for the auxiliary head, dataset), so that training
    from the datalist is training from the folders less the site."""
    _write_csv(path, ["image", "mask", "label", "box", "birads", "patient", "scanner", "dataset"],
               ([r.image, ";".join(r.masks), r.label or "", list(r.box) if r.box else "", r.birads or "",
                 r.group_key(), r.scanner or "", r.dataset] for r in records))


def _write_csv(path: Path, header: list[str], rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    partial.replace(path)


def train(arguments: list[str], timing: Path, frames: int, **facts) -> None:
    """Run ``mffmt train`` as a child (the product's own training) and write its wall time (and ``facts``);
    skipped when ``timing`` exists (the step finished before)."""
    if timing.exists():
        return
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "MFFMTCore", "train", *arguments, "--progress", "none"], check=True)
    write_json_atomic(timing, {"seconds": time.monotonic() - started, "frames": frames, **facts})


def judge(model: Path, records: list[SampleRecord]) -> tuple[list[FrameScore], dict]:
    info = read_model_info(model)
    scored = score_records(Predictor(model), records)
    return scored.scores, {"model": str(model), "temperature": info.temperature,
                           "lesion_decision": info.lesion_decision}


def judge_once(model: Path, records: list[SampleRecord], path: Path) -> tuple[list[FrameScore], dict]:
    """:func:`judge`, written to ``path`` (read back when it exists)."""
    if not path.exists():
        scores, info = judge(model, records)
        write_json_atomic(path, {**info, "scores": [asdict(score) for score in scores]})
    stored = json.loads(path.read_text())
    return [FrameScore(**score) for score in stored.pop("scores")], stored


def fine_tune_and_judge(folder: Path, train_half: list[SampleRecord], test: list[SampleRecord], model: Path,
                        parent: tuple[list[FrameScore], dict] | None = None, options: Sequence[str] = ()) -> dict:
    """Fine-tune ``model`` on ``train_half`` with exactly ``mffmt train --data SITE.csv --init-model MODEL
    --output RUN`` (and ``options``: another choice of the defaults, compared with them) and judge both on
    ``test`` (``parent``: the model's judged scores, when already known)."""
    datalist = folder / "site.csv"
    if not datalist.exists():
        write_site_csv(train_half, datalist)
    run = folder / "run"
    timing = folder / "train_time.json"
    train(["--data", str(datalist), "--init-model", str(model), "--output", str(run), "--overwrite", *options],
          timing, len(train_half), options=list(options))
    result = folder / "judged.json"
    if not result.exists():
        parent_scores, parent_info = parent or judge(model, test)
        new_scores, new = judge_once(RunFolder(run).model, test, folder / "judged_new.json")
        report = site_report(parent_scores, new_scores, {"parent": parent_info, "new": new})
        report["fine_tuning"] = json.loads(timing.read_text())
        report["judged_frames"] = len(test)
        write_json_atomic(result, report)
    return json.loads(result.read_text())


def site(name: str, records: list[SampleRecord], model: Path, out: Path) -> dict:
    """The default-model arm: ``model`` fine-tuned on the site's first half, both judged on the second."""
    train_half, test = halves(records)
    return fine_tune_and_judge(out / name, train_half, test, model)


def site_without(name: str, records: list[SampleRecord], others: list[SampleRecord], out: Path,
                 epochs: int | None, options: Sequence[str] = ()) -> dict:
    """The leave-site-out arm: a model trained with the default recipe on ``others`` (never on the site),
    judged zero-shot on the site's judging half, then fine-tuned on its first half and judged again."""
    folder = out / name / "without_site"
    train_half, test = halves(records)
    datalist = folder / "others.csv"
    if not datalist.exists():
        write_training_csv(others, datalist)
    base = folder / "base"
    resume = RunFolder(base).checkpoint.exists()
    train(["--config", str(DEFAULT_RECIPE), "--data", str(datalist), "--output", str(base),
           *(["--epochs", str(epochs)] if epochs else []), "--resume" if resume else "--overwrite"],
          folder / "base_time.json", len(others), resumed=resume,
          epochs=epochs or json.loads(DEFAULT_RECIPE.read_text())["epochs"])
    model = RunFolder(base).model
    zero_shot = judge_once(model, test, folder / "zero_shot.json")
    return fine_tune_and_judge(folder / variant_name(options), train_half, test, model, parent=zero_shot, options=options)


def variant_name(options: Sequence[str]) -> str:
    """The folder of a fine-tuning: ``fine_tuned`` with the defaults, e.g. ``fine_tuned_--lr_1e-3`` with options."""
    return "fine_tuned" + "".join(f"_{option}" for option in options).replace("/", "-")


def finished(out: Path, arm: str) -> dict[str, dict]:
    """The judged reports of one arm found under ``out``, per site (several processes may share it)."""
    reports = {}
    for name in SITES:
        folder = out / name if arm == "default" else out / name / "without_site"
        result = folder / ("judged.json" if arm == "default" else "fine_tuned/judged.json")
        if result.exists():
            reports[name] = json.loads(result.read_text())
            if arm == "without_site":
                reports[name]["trained_without_site"] = json.loads((folder / "base_time.json").read_text())
    return reports


def table(reports: dict[str, dict], arm: str) -> str:
    lines = ["| site | model | AUC | sensitivity / specificity | Dice | lesion-free given a lesion | ECE | training |",
             "|---|---|---|---|---|---|---|---|"]
    for name, report in reports.items():
        for key, label in zip(("parent", "new"), ARMS[arm]):
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

            if key == "new":
                tuning = report["fine_tuning"]
                spent = f"fine-tuned in {tuning['seconds']:.0f} s on {tuning['frames']} frames"
            elif "trained_without_site" in report:
                base = report["trained_without_site"]
                spent = f"{base['epochs']} epochs, {base['seconds'] / 60:.0f} min on {base['frames']} frames" \
                    + (" (resumed: time of the last part)" if base["resumed"] else "")
            else:
                spent = "-"
            lines.append(f"| {SITES[name]} ({report['patients']} patients, {report['judged_frames']} frames) | "
                         f"{label} | {cell('auc')} | {cell('sensitivity')} / {cell('specificity')} | "
                         f"{cell('dice')} | {cell('lesion_free_flagged', True)} | {cell('ece')} | {spent} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busbra", required=True)
    parser.add_argument("--busi", required=True)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--sites", nargs="+", default=list(SITES), choices=list(SITES))
    parser.add_argument("--train-without-site", action="store_true",
                        help="the leave-site-out arm: train a model without the site first (default recipe)")
    parser.add_argument("--epochs", type=int, help="epochs of the training without the site (default: the recipe's)")
    parser.add_argument("--fine-tune-options", default="",
                        help="with --train-without-site: options added to the fine-tuning (another choice of its "
                             "defaults, e.g. '--lr 1e-3'), judged beside the defaults' run in its own folder")
    args = parser.parse_args()
    torch.set_num_threads(available_cores())  # the judging; taskset limits it
    busbra, busi = read_busbra(args.busbra), read_busi(args.busi)
    chosen = {"logiq7": lambda r: r.scanner == LOGIQ7, "busi": lambda r: r.dataset == busi[0].dataset}
    arm = "without_site" if args.train_without_site else "default"
    for name in args.sites:
        records = [r for r in busbra + busi if chosen[name](r)]
        if arm == "default":
            site(name, records, args.model, args.output)
        else:
            options = args.fine_tune_options.split()
            report = site_without(name, records, [r for r in busbra + busi if not chosen[name](r)], args.output,
                                  args.epochs, options)
            if options:  # a variant of the defaults: its own table, beside the defaults' run
                print(table({name: report}, arm), flush=True)
                continue
        text = table(finished(args.output, arm), arm)
        (args.output / f"table_{arm}.md").write_text(text + "\n", encoding="utf-8")
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
