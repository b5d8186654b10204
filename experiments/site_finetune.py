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

``--adapt-norm PRIOR ...`` runs test-time adaptation instead of fine-tuning: the model (with
``--train-without-site`` the one trained without the site, which must exist) is judged on the same
judging half with its BatchNorm statistics adapted to that half's frames (``Predictor.adapted``, as
``mffmt predict --adapt-norm`` on a folder of them), once per prior strength, each against no
adaptation with the site report's paired differences (``--adapt-layers backbone``: the feature
extractor's layers only). ``--mixed`` (default model) judges the sites' judging halves together, one
mixed folder: the no-harm check. ``--tradeoff`` draws the lesion rule's trade-off (lesion frames kept
against lesion-free frames given one) of every model judged so far on a site's half. Example::

    nice python experiments/site_finetune.py --busbra ../shared/data/busbra --busi ../shared/data/busi \\
        --output runs/site_finetune --sites busi --train-without-site --adapt-norm 0 16 64

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
from MFFMTCore.base.lesion_decision import LesionDecision
from MFFMTCore.base.run_folder import RunFolder
from MFFMTCore.data import read_busbra, read_busi
from MFFMTCore.data.records import SampleRecord
from MFFMTCore.evaluation.calibration import lesion_tradeoff, tradeoff_points
from MFFMTCore.evaluation.model_fit import FrameScore
from MFFMTCore.evaluation.plots import plot_lesion_tradeoff
from MFFMTCore.evaluation.site_report import site_report
from MFFMTCore.files import write_json_atomic
from MFFMTCore.inference.predictor import Predictor
from MFFMTCore.model_completion import score_records
from MFFMTCore.model_file import read_model_info
from MFFMTCore.network.norm_adaptation import LAYER_CHOICES, NormAdaptation

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


def judge(model: Path, records: list[SampleRecord], adaptation: NormAdaptation | None = None
          ) -> tuple[list[FrameScore], dict]:
    """Score ``records`` with ``model`` through the Predictor; with ``adaptation``, its BatchNorm statistics
    first adapted to the frames of all ``records`` (as ``mffmt predict --adapt-norm`` on a folder of them)."""
    info = read_model_info(model)
    predictor = Predictor(model)
    facts: dict = {"model": str(model), "temperature": info.temperature, "lesion_decision": info.lesion_decision}
    if adaptation is not None:
        started = time.monotonic()
        predictor = predictor.adapted([record.image for record in records], adaptation)
        facts |= {"norm_adaptation": predictor.norm_adaptation, "adaptation_seconds": time.monotonic() - started}
    started = time.monotonic()
    scored = score_records(predictor, records)
    facts["judging_seconds"] = time.monotonic() - started
    return scored.scores, facts


def judge_once(model: Path, records: list[SampleRecord], path: Path, adaptation: NormAdaptation | None = None
               ) -> tuple[list[FrameScore], dict]:
    """:func:`judge`, written to ``path`` (read back when it exists)."""
    if not path.exists():
        scores, info = judge(model, records, adaptation)
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


def adaptation_name(adaptation: NormAdaptation) -> str:
    """The folder of an adaptation arm, e.g. ``prior_16_all``."""
    return f"prior_{adaptation.prior_strength:g}_{adaptation.layers}"


def _arm_order(path: Path) -> tuple[float, str]:
    """Arms by prior strength, then layers (``path``: ``.../<arm>/judged*.json``)."""
    _, prior, layers = path.parent.name.split("_")
    return float(prior), layers


def adaptation_label(name: str) -> str:
    """The words of an arm's folder name: ``prior_16_all`` -> ``adapted, N = 16, all BN layers``."""
    _, prior, layers = name.split("_")
    return f"adapted, N = {prior}, {'all BN layers' if layers == 'all' else 'backbone BN only'}"


def adapt_and_judge(folder: Path, model: Path, test: list[SampleRecord], unadapted: tuple[list[FrameScore], dict],
                    adaptations: Sequence[NormAdaptation]) -> dict[str, dict]:
    """Test-time adaptation: ``model`` judged on ``test`` with its BatchNorm statistics adapted to the frames
    of ``test`` (transductive, as a folder of one site would be), against ``unadapted`` (its scores without
    adaptation) with the site report's paired differences; per arm ``folder/<arm>/judged.json``."""
    reports = {}
    for adaptation in adaptations:
        arm = folder / adaptation_name(adaptation)
        result = arm / "judged.json"
        if not result.exists():
            scores, info = judge_once(model, test, arm / "judged_new.json", adaptation)
            report = site_report(unadapted[0], scores, {"parent": unadapted[1], "new": info})
            report["judged_frames"] = len(test)
            write_json_atomic(result, report)
        reports[adaptation_name(adaptation)] = json.loads(result.read_text())
    return reports


def adaptation_table(title: str, reports: dict[str, dict]) -> str:
    """Each adaptation arm against no adaptation: the figures and their paired differences (adapted minus not)."""
    lines = [f"| {title} | AUC | sensitivity / specificity | Dice | lesion-free given a lesion | ECE | "
             "difference: AUC; Dice; lesion-free; ECE |", "|---|---|---|---|---|---|---|"]
    rows = [("no adaptation", next(iter(reports.values()))["parent"], None)]
    rows += [(adaptation_label(name), report["new"], report["difference"]) for name, report in reports.items()]
    for name, entry, difference in rows:
        m = entry["metrics"]
        changes = "-" if difference is None else "; ".join(
            _cell(difference[k], signed=True, percent=k == "lesion_free_flagged")
            for k in ("auc", "dice", "lesion_free_flagged", "ece"))
        lines.append(f"| {name} | {_cell(m['auc'])} | {_cell(m['sensitivity'])} / {_cell(m['specificity'])} | "
                     f"{_cell(m['dice'])} | {_cell(m['lesion_free_flagged'], percent=True)} | {_cell(m['ece'])} | "
                     f"{changes} |")
    return "\n".join(lines)


def _cell(entry: dict, percent: bool = False, signed: bool = False) -> str:
    """``value (low-high)``, as a percentage with ``percent``, with a sign with ``signed``."""
    if entry["value"] is None:
        return "n/a"
    scale, digits, unit = (100, 0, "%") if percent else (1, 3, "")
    sign = "+" if signed else ""
    text = f"{scale * entry['value']:{sign}.{digits}f}{unit}"
    if entry["low"] is not None:
        text += f" ({scale * entry['low']:{sign}.{digits}f} to {scale * entry['high']:{sign}.{digits}f})"
    return text


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
    parser.add_argument("--adapt-norm", type=float, nargs="+", metavar="PRIOR",
                        help="test-time adaptation arm, instead of fine-tuning: judge the model (with "
                             "--train-without-site: the model trained without the site, which must exist) on the "
                             "judging half with its BatchNorm statistics adapted to that half's frames, once per "
                             "prior strength given, against no adaptation")
    parser.add_argument("--adapt-layers", choices=LAYER_CHOICES, default="all",
                        help="with --adapt-norm: the BatchNorm layers adapted")
    parser.add_argument("--tradeoff", action="store_true",
                        help="the lesion rule's trade-off (lesion frames kept against lesion-free frames given a "
                             "lesion) of every model judged so far on each site's judging half, without and with "
                             "adaptation and fine-tuned: lesion_tradeoff.png and .md beside them (no network run)")
    parser.add_argument("--mixed", action="store_true",
                        help="with --adapt-norm and without --train-without-site: the no-harm check, judged on the "
                             "judging halves of all --sites together (one folder of mixed scanners)")
    args = parser.parse_args()
    torch.set_num_threads(available_cores())  # the judging; taskset limits it
    busbra, busi = read_busbra(args.busbra), read_busi(args.busi)
    chosen = {"logiq7": lambda r: r.scanner == LOGIQ7, "busi": lambda r: r.dataset == busi[0].dataset}
    arm = "without_site" if args.train_without_site else "default"
    if args.tradeoff:
        for name in args.sites:
            print(tradeoff(args.output / name / ("without_site" if args.train_without_site else "")), flush=True)
        return 0
    if args.adapt_norm:
        return adaptation_arms(args, {name: [r for r in busbra + busi if chosen[name](r)] for name in args.sites}, arm)
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


def tradeoff(folder: Path) -> str:
    """The lesion rule's trade-off curves of the models judged in ``folder`` (zero-shot, each adaptation arm,
    fine-tuned with the defaults), each with its own stored rule marked; written beside them."""
    sources = {"zero-shot": folder / "zero_shot.json",
               **{adaptation_label(path.parent.name): path
                  for path in sorted((folder / "adapted").glob("*/judged_new.json"), key=_arm_order)},
               "fine-tuned (defaults)": folder / "fine_tuned" / "judged_new.json"}
    curves, marks, rows = {}, {}, []
    for name, path in sources.items():
        if not path.exists():
            continue
        stored = json.loads(path.read_text())
        scores = [FrameScore(**score) for score in stored["scores"] if score["lesion"] is not None]
        curve = lesion_tradeoff([s.peak for s in scores], [s.largest_fraction for s in scores],
                                [bool(s.lesion) for s in scores])
        rule = LesionDecision.from_json(stored["lesion_decision"])
        lesion = [s.found(rule) for s in scores if s.lesion]
        free = [s.found(rule) for s in scores if not s.lesion]
        curves[name], marks[name] = curve, (sum(free) / len(free), sum(lesion) / len(lesion))
        points = tradeoff_points(curve)
        rows.append(f"| {name} | peak >= {rule.min_peak:g}, area >= {rule.min_area_fraction:g}: "
                    f"{marks[name][1]:.0%} kept, {marks[name][0]:.0%} flagged | "
                    + " | ".join("-" if v is None else f"{v:.0%}" for v in points.values()) + " |")
    header = ("| model | its own rule | lesion frames kept with <= 10% lesion-free flagged | with <= 20% | "
              "lesion-free flagged keeping >= 95% | keeping >= 97% |\n|---|---|---|---|---|---|")
    text = header + "\n" + "\n".join(rows)
    plot_lesion_tradeoff(curves, folder / "lesion_tradeoff.png", marks)
    (folder / "lesion_tradeoff.md").write_text(text + "\n", encoding="utf-8")
    write_json_atomic(folder / "lesion_tradeoff.json", {"curves": curves, "own_rule": marks})
    return text


def adaptation_arms(args: argparse.Namespace, records: dict[str, list[SampleRecord]], arm: str) -> int:
    """The ``--adapt-norm`` arms: per site (or, with ``--mixed``, the sites' judging halves together) the
    model judged with and without test-time adaptation; the table to ``table_adaptation_<arm>.md``."""
    adaptations = [NormAdaptation(prior, args.adapt_layers) for prior in args.adapt_norm]
    judged = {name: halves(site_records)[1] for name, site_records in records.items()}
    if args.mixed:
        judged = {"+".join(judged): [record for half in judged.values() for record in half]}
    sections = []
    for name, test in judged.items():
        if arm == "without_site":
            folder = args.output / name / "without_site"
            model = RunFolder(folder / "base").model
            if not model.exists():
                raise SystemExit(f"{model}: no model trained without {name}; run --train-without-site first")
            unadapted = judge_once(model, test, folder / "zero_shot.json")
        else:
            folder = args.output / (f"mixed_{name}" if args.mixed else name)
            model = args.model
            unadapted = judge_once(model, test, folder / "unadapted.json")
        reports = adapt_and_judge(folder / "adapted", model, test, unadapted, adaptations)
        every = {path.parent.name: json.loads(path.read_text())
                 for path in sorted((folder / "adapted").glob("*/judged.json"), key=_arm_order)}  # earlier arms too
        title = (f"{' + '.join(SITES.get(n, n) for n in name.split('+'))} ({next(iter(reports.values()))['patients']} "
                 f"patients, {len(test)} frames), {'model trained without the site' if arm == 'without_site' else 'default model'}")
        sections.append(adaptation_table(title, every))
    text = "\n\n".join(sections)
    suffix = f"{arm}_mixed" if args.mixed else arm
    (args.output / f"table_adaptation_{suffix}_{'_'.join(args.sites)}.md").write_text(text + "\n", encoding="utf-8")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
