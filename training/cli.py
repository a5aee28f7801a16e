"""The ``patchsight model ...`` commands: inspect, build, train, calibrate and evaluate bundles.

``patchsight`` mounts ``model_app`` as its ``model`` group. Heavy imports (torch,
transformers) happen inside the commands, so ``patchsight --help`` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

model_app = typer.Typer(help="Model bundles: inspect, train, evaluate.", no_args_is_help=True)


@model_app.command("info")
def model_info(
    bundle: Path = typer.Argument(..., help="bundle directory"),
    device: str = typer.Option("cpu", help="auto | cpu | cuda | mps"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
) -> None:
    """Print what a bundle contains: encoder, head, questions, thresholds, provenance."""
    from transformers.utils import logging as hf_logging

    from model.bundle import BundleError, load_bundle

    hf_logging.disable_progress_bar()
    console = Console()
    try:
        info = load_bundle(bundle, device=device).describe()
    except (BundleError, FileNotFoundError, OSError) as exc:
        console.print(f"[red]cannot read bundle:[/red] {exc}")
        raise typer.Exit(1) from None
    info["size_mb"] = round(sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 1e6, 2)
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return

    summary = Table(title=f"bundle {info['model_id']}", show_header=False)
    for key in ("model_id", "directory", "created_at", "size_mb", "device", "dtype", "clip_baseline", "linear_probe"):
        summary.add_row(key, str(info[key]))
    for part in ("encoder", "head"):
        for key, value in info[part].items():
            summary.add_row(f"{part}.{key}", str(value))
    console.print(summary)

    questions = Table(title="questions")
    for col in ("id", "text", "defect_type", "threshold"):
        questions.add_column(col)
    for q in info["questions"]:
        threshold = q.get("threshold", info["thresholds"].get(q["id"], info["default_threshold"]))
        questions.add_row(q["id"], q["text"], q["defect_type"], f"{threshold:.3f}")
    console.print(questions)
    extra = {k: v for k, v in info["thresholds"].items() if k not in {q["id"] for q in info["questions"]}}
    if extra:
        console.print(f"other thresholds: {extra}")
    console.print(f"default threshold: {info['default_threshold']}")
    if info["provenance"]:
        console.print("provenance:")
        console.print_json(json.dumps(info["provenance"], default=str))


# --- Training and evaluation (training/pretrain.py, finetune.py, calibrate.py, evaluate.py) -----


def _recordings(paths: list[Path]) -> list[Path]:
    from ingest.recording import RecordingError, find_recordings

    try:
        return find_recordings(paths)
    except RecordingError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from None


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@model_app.command("pretrain-encoder")
def pretrain_encoder(
    out: Path = typer.Option(..., "--out", help="folder for the CLIP (config, weights, tokenizer, pretrain.json)"),
    time_limit_min: float = typer.Option(26.0, help="training stops (and its schedule ends) by this wall time"),
    max_steps: int = typer.Option(1200, help="at most this many steps"),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(8e-4),
    image_size: int = typer.Option(128),
    seed: int = typer.Option(0),
    threads: int = typer.Option(2, help="torch threads (the renderer runs in one more process)"),
    device: str = typer.Option("cpu", help="cpu | cuda | auto (the defaults are sized for 2 CPU cores)"),
    data_workers: int = typer.Option(1, help="rendering processes (a GPU needs about 10 to keep up)"),
    hard_pair_rate: float = typer.Option(
        0.0, help="share of parts with a surface defect also shown as their defect-free twin (hard negatives)"),
    init_from: Path | None = typer.Option(
        None, help="continue from this CLIP folder (or a bundle's encoder) instead of a new model"),
) -> None:
    """Pretrain a compact CLIP contrastively on synthetic frames with web-style captions."""
    from training.pretrain import PretrainConfig, pretrain

    _quiet_transformers()
    console = Console(stderr=True)
    cfg = PretrainConfig(time_limit_s=time_limit_min * 60, max_steps=max_steps, batch_size=batch_size, lr=lr,
                         image_size=image_size, seed=seed, threads=threads, warmup_steps=30, device=device,
                         data_workers=data_workers, hard_pair_rate=hard_pair_rate,
                         init_from=str(init_from) if init_from else None)
    try:
        record = pretrain(cfg, out, log=console.print)
    except (ValueError, OSError) as exc:  # e.g. --init-from is not a CLIP folder or a compact bundle
        console.print(f"[red]pretrain-encoder failed:[/] {exc}")
        raise typer.Exit(1) from None
    console.print(f"{record['steps']} steps, {record['images_seen']} images, {record['wall_s']}s")
    typer.echo(str(out))


@model_app.command("finetune")
def finetune_command(
    encoder: Path = typer.Option(..., "--encoder", help="a pretrained CLIP folder, or a bundle to adapt"),
    data: list[Path] = typer.Option(..., "--data", help="labelled recordings (or folders of them); repeat"),
    out: Path = typer.Option(..., "--out", help="where to write the bundle (or, with --head-only, the head)"),
    variant: str = typer.Option(
        "full", help="full | cls_only | no_position | no_position_at_all | question_blind (ablations)"),
    head_only: bool = typer.Option(False, "--head-only", help="write only the head (ablations)"),
    view: str = typer.Option(
        "frame", help="frame: train the whole-frame head | part: add a part head to the --encoder bundle, trained "
        "on the part view (the part cut around the tracker's box); it starts from the bundle's part head, else "
        "(--init-head) from its whole-frame head"),
    margin: float = typer.Option(0.06, min=0.0, max=1.0,
                                 help="--view part: the margin around the part's box, of its longer side"),
    init_head: bool = typer.Option(False, "--init-head", help="start from the --encoder bundle's head"),
    init_head_from: Path | None = typer.Option(
        None, "--init-head-from", help="start from this bundle's (or head folder's) head instead"),
    model_id: str = typer.Option("patchsight-compact", help="the bundle's model id"),
    config: Path = typer.Option(None, "--config", help="take the questions from this config's --line (default: the "
                                "recordings' own list, else the ids their labels answer, worded as the --encoder bundle does)"),
    line: str = typer.Option(None, "--line", help="line id in --config whose questions to train"),
    max_steps: int = typer.Option(3000),
    image_tokens: str | None = typer.Option(
        None, help="patch | cls_then_patch: what the head reads of the encoder's feature layer (cls_then_patch: "
        "the CLS token before the patch tokens, as LLaVA's 'full' strategy reads them; its old name cls_patch is "
        "still taken); default: the started head's, else patch"),
    decoder_width: int = typer.Option(192, help="tiny decoder: hidden size"),
    decoder_layers: int = typer.Option(3, help="tiny decoder: layers"),
    batch_frames: int = typer.Option(24, help="frames per step (every question is asked of each)"),
    lr: float = typer.Option(1e-3),
    lr_decay: str = typer.Option(
        "none", help="none | cosine: after warmup keep --lr, or anneal it to zero by --max-steps or "
        "--time-limit-min, whichever comes first"),
    eval_every: int = typer.Option(40),
    patience: int = typer.Option(6, help="evaluations without improvement before stopping"),
    val_frames: int = typer.Option(
        320, min=1, help="holdout: validation frames scored at each evaluation; more: a steadier loss to keep the best "
        "step by (cross-validation scores every frame)"),
    folds: int | None = typer.Option(
        None, min=0, help="validation over parts: 0, a holdout of --val-fraction of them; 2 or more, cross-validation "
        "over that many folds (the step count and the thresholds chosen on every part's held-out frames, then the head "
        "trained on all of them); default: 5 folds when a holdout would hold fewer than 50 parts, else a holdout"),
    val_fraction: float = typer.Option(0.15, min=0.01, max=0.9, help="the share of the parts a holdout validates on"),
    partless_run: int = typer.Option(
        20, min=1, help="frames without a part_id count as one part per this many, in recording order (video frames "
        "of one stretch of belt); 1: each frame its own part, for a set of still images"),
    keep_anyway: bool = typer.Option(
        False, "--keep-anyway", help="write the head even when validation says it learned nothing or is not above its "
        "starting point and the linear probe (otherwise finetune exits 1 and writes nothing)"),
    select_by: str = typer.Option(
        "loss", help="loss | auroc: which validation number keeps the best step and counts as improvement (under "
        "cross-validation: chooses the step count, by its mean over the folds)"),
    frame_stride: int = typer.Option(1, help="use every n-th labelled frame"),
    train_pairs: int = typer.Option(
        0, min=0, help="also train on this many rendered twin pairs per question (synthetic-line questions only)"),
    train_pair_seed: int = typer.Option(4001, help="seed of those pairs (evaluation uses 9001)"),
    time_limit_min: float = typer.Option(30.0),
    max_fpr: float = typer.Option(0.05, "--max-fpr", min=0.0, max=1.0,
                                  help="thresholds flag at most this share of clean validation frames (1: no cap)"),
    cache: Path = typer.Option(None, "--cache", help="keep encoded frames here, a file per recording (several heads "
                               "share one encoding; added recordings are encoded alone)"),
    seed: int = typer.Option(0),
    threads: int = typer.Option(2, min=1),
    device: str = typer.Option("cpu", help="cpu | cuda | auto: where the encoder and the head train"),
) -> None:
    """Train the MLLM head on labelled recordings with the encoder frozen; write a bundle."""
    from model.head import OLD_IMAGE_TOKENS
    from training.finetune import VARIANTS, FinetuneConfig, HeadRefused, finetune

    if variant not in VARIANTS:
        raise typer.BadParameter(f"choose one of {', '.join(VARIANTS)}", param_hint="--variant")
    if image_tokens not in (None, "patch", "cls_then_patch", *OLD_IMAGE_TOKENS):
        raise typer.BadParameter("choose patch or cls_then_patch", param_hint="--image-tokens")
    if lr_decay not in ("none", "cosine"):
        raise typer.BadParameter("choose none or cosine", param_hint="--lr-decay")
    if view not in ("frame", "part"):
        raise typer.BadParameter("choose frame or part", param_hint="--view")
    if select_by not in ("loss", "auroc"):
        raise typer.BadParameter("choose loss or auroc", param_hint="--select-by")
    if folds == 1:
        raise typer.BadParameter("one fold leaves nothing to train on: 0 (a holdout) or 2 or more", param_hint="--folds")
    _quiet_transformers()
    console = Console(stderr=True)
    questions = _config_line(config, line, console).questions if config is not None else None
    from model.head import HeadConfig, TinyDecoderConfig

    try:  # a value out of range is named here, not in a traceback
        decoder = TinyDecoderConfig(hidden_size=decoder_width, num_layers=decoder_layers, num_heads=4,
                                    intermediate_size=3 * decoder_width)
        cfg = FinetuneConfig(head=HeadConfig.tiny(decoder=decoder), image_tokens=image_tokens, variant=variant,
                             max_steps=max_steps, batch_frames=batch_frames, lr=lr, lr_decay=lr_decay,
                             eval_every=eval_every, patience=patience, max_val_frames=val_frames, folds=folds,
                             select_by=select_by,
                             val_fraction=val_fraction, partless_run=partless_run, keep_anyway=keep_anyway,
                             frame_stride=frame_stride, time_limit_s=time_limit_min * 60, seed=seed,
                             threads=threads, device=device, max_false_positive_rate=max_fpr,
                             train_pairs=train_pairs, train_pair_seed=train_pair_seed, view=view, margin=margin)
        record = finetune(cfg, encoder, _recordings(data), out, questions=questions, model_id=model_id,
                          log=console.print, init_head=init_head, head_only=head_only, cache_dir=cache,
                          init_head_from=init_head_from)
    except HeadRefused as exc:
        console.print(f"[red]finetune refused the head:[/] {exc}")
        raise typer.Exit(1) from None
    except (ValueError, OSError) as exc:  # OSError: --out cannot be written
        console.print(f"[red]finetune failed:[/] {exc}")
        raise typer.Exit(1) from None
    validation = record["validation"]
    console.print(f"best step {record['best_step']} of {record['steps']} ({record['stopped']}; {validation['method']}"
                  f"{'' if validation['folds'] == 1 else ', ' + str(validation['folds']) + ' folds'}), "
                  f"val loss {record['best_val_loss']}, val AUROC {record['best_val_auroc']}")
    typer.echo(str(out))


def _config_line(config: Path, line: str | None, console: Console):  # type: ignore[no-untyped-def]
    """The ``--line`` of a ``--config`` file (its first line without ``--line``); exits 1 when there is none."""
    from schemas.config import load_config
    from schemas.errors import ConfigError

    try:
        cfg_file = load_config(config)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    chosen = cfg_file.line(line) if line else (cfg_file.lines[0] if cfg_file.lines else None)
    if chosen is None:
        console.print(f"[red]no line {line!r} in {config}[/]")
        raise typer.Exit(1)
    return chosen


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _rates(row: dict) -> str:
    return (f"detection {_pct(row['detection_rate'])} ({row['caught']}/{row['defective']}), "
            f"false alarms {_pct(row['false_alarm_rate'])} ({row['flagged']}/{row['good']} good parts)")


def _print_parts(console: Console, parts: dict) -> None:
    """What ``calibrate`` chose for parts and what it buys on the calibration recordings."""
    if "skipped" in parts:
        console.print(f"[yellow]part thresholds not calibrated:[/] {parts['skipped']} (they stay as they were)")
        return
    table = Table(title=f"part thresholds ({parts['aggregate']} of a part's frames; {parts['parts']} parts: "
                  f"{parts['defective']} defective, {parts['good']} good; at most {parts['allowed_flagged']} good "
                  f"parts flagged, a budget of {parts['max_false_alarm_rate']:.1%})")
    for col in ("question", "threshold", "caught", "detection", "good flagged", "part AUROC"):
        table.add_column(col)
    for qid, r in parts["per_question"].items():
        auc = "-" if r["part_auroc"] is None else f"{r['part_auroc']:.3f}"
        table.add_row(qid, f"{r['threshold']:.4f}", f"{r['caught']}/{r['defective']}", _pct(r["detection_rate"]),
                      str(r["flagged"]), auc)
    console.print(table)
    report = parts["report"]
    table = Table(title="per part on the calibration recordings, by defect type")
    for col in ("defect type", "detection", "missed", "false alarms", "wrong defect"):
        table.add_column(col, no_wrap=True)
    for name, row in [*report["by_defect_type"].items(), ("all", report["overall"])]:
        table.add_row(name, f"{_pct(row['detection_rate'])} ({row['caught']}/{row['defective']})", str(row["missed"]),
                      f"{_pct(row['false_alarm_rate'])} ({row['flagged']}/{row['good']})", str(row["wrong_defect"]))
    console.print(table)
    console.print(f"per part, calibration recordings: {_rates(report['overall'])}")
    if "cross_validated" in parts:
        cv = parts["cross_validated"]
        console.print(f"per part, each of {len(cv['folds'])} --data folders with thresholds chosen on the others: "
                      f"{_rates(cv['report']['overall'])}")


@model_app.command("calibrate")
def calibrate_command(
    bundle: Path = typer.Argument(..., help="bundle directory; its bundle.json is rewritten"),
    data: list[Path] = typer.Option(..., "--data", help="labelled recordings the head was not trained on (or "
                                    "folders of them, e.g. one synth seed each); repeat"),
    max_fpr: float = typer.Option(0.05, "--max-fpr", min=0.0, max=1.0,
                                  help="frame thresholds flag at most this share of the clean frames (1: no cap)"),
    max_false_alarm_rate: float | None = typer.Option(
        None, "--max-false-alarm-rate", min=0.0, max=1.0,
        help="part thresholds flag at most this share of the good parts, by any question (default: the --line's "
        "alert_policy.max_false_alarm_rate, else 0.02)"),
    aggregate: str = typer.Option("mean", help="mean | top3 | noisy_or: how a part's frame scores become one"),
    config: Path = typer.Option(None, "--config", help="take the default budget from this config's --line"),
    line: str = typer.Option(None, "--line", help="line id in --config (default: its first line)"),
    frame_stride: int = typer.Option(1, min=1, help="use every n-th labelled frame"),
    cache: Path = typer.Option(None, "--cache", help="keep encoded frames here"),
    threads: int = typer.Option(2),
) -> None:
    """Refit a bundle's frame and part thresholds on labelled recordings.

    Frame thresholds: best balanced accuracy under a false-positive cap, the rule finetune applies
    to its validation parts. Part thresholds: the frames grouped by part, aggregated per question,
    and every question's threshold chosen together so that at most --max-false-alarm-rate of the
    good parts are flagged. Copy the bundle first to keep the old thresholds; the new ones, what
    they buy and how they were set go in its bundle.json, with the served scores' distribution per
    question (score_reference), which the alert service watches for drift (docs/drift.md).
    """
    from schemas.part import PART_AGGREGATES

    if aggregate not in PART_AGGREGATES:
        raise typer.BadParameter(f"choose one of {', '.join(PART_AGGREGATES)}", param_hint="--aggregate")
    console = Console(stderr=True)
    if max_false_alarm_rate is None and config is not None:
        max_false_alarm_rate = _config_line(config, line, console).alert_policy.max_false_alarm_rate

    import torch

    from model.bundle import BundleError
    from training.calibrate import calibrate

    _quiet_transformers()
    torch.set_num_threads(threads)
    recordings, folds = [], []
    for path in data:  # each --data folder is a fold of the cross-validated part report
        for rec in _recordings([path]):
            if rec not in recordings:
                recordings.append(rec)
                folds.append(str(path))
    try:
        record = calibrate(bundle, recordings, max_fpr, frame_stride, cache, log=console.print,
                           max_false_alarm_rate=max_false_alarm_rate, aggregate=aggregate, folds=folds)
    except (BundleError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]calibrate failed:[/] {exc}")
        raise typer.Exit(1) from None
    table = Table(title=f"frame thresholds ({record['frames']} frames, false-positive cap {max_fpr})")
    for col in ("question", "threshold", "was", "yes", "no", "FPR", "TPR", "AUROC"):
        table.add_column(col)
    for qid, r in record["questions"].items():
        table.add_row(qid, f"{r['threshold']:.4f}", f"{r['previous']:.4f}", str(r["positives"]), str(r["negatives"]),
                      *("-" if r[k] is None else f"{r[k]:.3f}"
                        for k in ("false_positive_rate", "true_positive_rate", "auroc")))
    console.print(table)
    _print_parts(console, record["parts"])
    typer.echo(str(bundle))


@model_app.command("fit-anomaly")
def fit_anomaly_command(
    bundle: Path = typer.Argument(..., help="bundle directory; gains anomaly/ and an anomaly question"),
    data: list[Path] = typer.Option([], "--data", help="labelled recordings (or folders): their good frames are "
                                    "used, the others left out; repeat"),
    good: list[Path] = typer.Option([], "--good", help="recordings (or folders) of good parts only, labelled or not: "
                                    "every frame is used; repeat"),
    question_id: str = typer.Option("anomaly", "--question-id", help="the anomaly question's id (made if the bundle "
                                    "has none; a line asks it by this id with kind: anomaly)"),
    question_text: str = typer.Option(None, "--question-text", help="its text (default: the bundle's, else "
                                      "'Is this part unlike the good parts?')"),
    coreset: int = typer.Option(2048, min=1, help="good patches kept in the memory (greedy k-center coreset)"),
    k: int = typer.Option(1, min=1, help="nearest memory patches averaged per patch"),
    holdout: float = typer.Option(0.25, min=0.01, max=0.9, help="share of the good parts kept out of the memory "
                                  "to set the score's scale"),
    z_at_half: float = typer.Option(3.0, "--z-at-half", help="a frame this many robust standard deviations above "
                                    "the held-out good frames' median scores 0.5"),
    frame_stride: int = typer.Option(1, min=1, help="use every n-th frame"),
    seed: int = typer.Option(0),
    threads: int = typer.Option(2, min=1),
) -> None:
    """Fit a memory of good parts' patch tokens (PatchCore) that scores the bundle's anomaly question.

    For lines with good parts and few or no defects. The score is how unlike the good parts a
    frame's patches are, mapped to [0, 1]; calibrate, eval and the worker treat the question like
    any other. Nothing is written to the bundle unless all of it is.
    """
    import torch

    from model.bundle import BundleError
    from training.anomaly import fit_anomaly

    _quiet_transformers()
    torch.set_num_threads(threads)
    console = Console(stderr=True)
    try:
        recordings = _recordings(data) if data else []
        good_only = _recordings(good) if good else []
        record = fit_anomaly(bundle, recordings, good_only, question_id, question_text, coreset, k, holdout,
                             z_at_half, frame_stride, seed, log=console.print)
    except (BundleError, FileNotFoundError, ValueError, OSError) as exc:
        console.print(f"[red]fit-anomaly failed:[/] {exc}")
        raise typer.Exit(1) from None
    console.print(f"question {record['question_id']!r}: {record['patches_kept']} patches from {record['good_frames']} "
                  f"good frames of {record['good_parts']} parts")
    typer.echo(str(bundle))


@model_app.command("label-parts")
def label_parts_command(
    recordings: list[Path] = typer.Argument(..., help="recordings (or folders of them) whose frames name no part"),
) -> None:
    """Name the part each frame shows, as the camera's part tracker follows it (truth.part_id).

    For recordings of your own (`patchsight record`, `patchsight label`): finetune then validates
    by part, calibrate sets part thresholds, and the part view and its readout can be trained.
    A recording that already names its parts is refused.
    """
    from ingest.recording import RecordingError
    from training.part_labels import label_parts

    console = Console(stderr=True)
    try:
        for rec in _recordings(recordings):
            named = label_parts(rec)
            typer.echo(f"{rec}: {named['parts']} parts on {named['frames']} frames")
    except (RecordingError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]label-parts failed:[/] {exc}")
        raise typer.Exit(1) from None


@model_app.command("fit-readout")
def fit_readout_command(
    bundle: Path = typer.Argument(..., help="bundle directory with a part view; gains part-readout.safetensors"),
    data: list[Path] = typer.Option(..., "--data", help="labelled recordings (or folders) the head was trained on, "
                                    "not the calibration ones; repeat"),
    epochs: int = typer.Option(4, min=1, help="passes over the training frames"),
    val_fraction: float = typer.Option(0.15, min=0.01, max=0.9, help="share of the parts held out to report the "
                                       "readout's AUROC on"),
    seed: int = typer.Option(0, help="the split (as finetune's --seed) and the fit"),
    frame_stride: int = typer.Option(1, min=1, help="use every n-th labelled frame"),
    cache: Path = typer.Option(None, "--cache", help="keep encoded part views here (shared with finetune and calibrate)"),
    model_id: str = typer.Option(None, "--model-id", help="the bundle's new model id, carried by every result "
                                 "(default: kept)"),
    threads: int = typer.Option(2, min=1),
) -> None:
    """Fit a linear readout of the part view's patch tokens, one logistic regression per question.

    It reads each patch at its place, beside the part head, which reads small local defects
    (a missing screw) faintly. Run `model calibrate` after it: calibrate chooses how much of each
    question's part-view score comes from the readout, and the part thresholds. Nothing is
    written to the bundle unless all of it is.
    """
    import torch

    from model.bundle import BundleError
    from training.readout import fit_readout

    _quiet_transformers()
    torch.set_num_threads(threads)
    console = Console(stderr=True)
    try:
        record = fit_readout(bundle, _recordings(data), frame_stride, cache, epochs, val_fraction, seed,
                             model_id=model_id, log=console.print)
    except (BundleError, FileNotFoundError, ValueError, OSError) as exc:
        console.print(f"[red]fit-readout failed:[/] {exc}")
        raise typer.Exit(1) from None
    table = Table(title=f"part readout, held-out parts ({record['validation_frames']} frames)")
    for col in ("question", "frame AUROC", "part AUROC", "defective parts / parts"):
        table.add_column(col)
    for qid, r in record["validation"].items():
        table.add_row(qid, *("-" if r[k] is None else f"{r[k]:.3f}" for k in ("frame_auroc", "part_auroc")),
                      f"{r['defective_parts']} / {r['parts']}")
    console.print(table)
    if record["skipped"]:
        console.print(f"not fitted (too few yes or no frames): {', '.join(record['skipped'])}")
    console.print("next: `patchsight model calibrate` chooses the readout's share and the part thresholds")
    typer.echo(str(bundle))


@model_app.command("eval")
def eval_command(
    bundle: Path = typer.Argument(..., help="bundle directory"),
    data: list[Path] = typer.Option(..., "--data", help="held-out labelled recordings (or folders); repeat"),
    out: Path = typer.Option(None, "--out", help="report folder (default runs/eval-<time>)"),
    ablations: Path = typer.Option(None, "--ablations", help="folder of ablation heads (finetune --head-only)"),
    pairs: int = typer.Option(
        40, min=0, help="image pairs per question, rendered for the synthetic line's questions (a question of your "
        "own has none: the report says so); 0: none"),
    pair_seed: int = typer.Option(9001, help="seed of the rendered pairs: never a training seed"),
    threads: int = typer.Option(2, min=1),
) -> None:
    """CLIP zero-shot vs linear probe vs MLLM head (and ablations): markdown, JSON and plots.

    Nothing is written to --out unless the whole report is.
    """
    import time as _time

    from training.evaluate import evaluate

    _quiet_transformers()
    console = Console(stderr=True)
    out = out or Path("runs") / f"eval-{_time.strftime('%Y%m%d-%H%M%S')}"
    try:
        evaluate(bundle, _recordings(data), out, ablations=ablations, pairs_per_question=pairs, pair_seed=pair_seed,
                 threads=threads, log=console.print)
    except (ValueError, OSError) as exc:  # BundleError is a ValueError
        console.print(f"[red]eval failed:[/] {exc}")
        raise typer.Exit(1) from None
    console.print((out / "report.md").read_text())
    typer.echo(str(out))


@model_app.command("from-llava")
def from_llava(
    llava: str = typer.Option("llava-hf/llava-1.5-7b-hf", help="LLaVA checkpoint: hub id or local folder"),
    clip: str = typer.Option("openai/clip-vit-large-patch14-336", help="the CLIP its vision tower came from"),
    config: Path = typer.Option(None, "--questions", help="config file whose lines' questions the bundle lists"),
    out: Path = typer.Option(..., "--out", help="bundle folder to write"),
    model_id: str = typer.Option(None, help="model id carried by every result (default: llava:<name>)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps"),
) -> None:
    """Build a zero-shot bundle from a Hugging Face LLaVA checkpoint and its CLIP (the paper's pair)."""
    from model.bundle import bundle_from_llava
    from schemas.config import load_config

    questions = []
    if config is not None:
        seen: set[str] = set()
        for line in load_config(config).lines:
            questions += [q for q in line.questions if not (q.id in seen or seen.add(q.id))]
    try:
        bundle = bundle_from_llava(llava, clip, questions, model_id, device)
    except OSError as exc:
        typer.secho(f"cannot load the checkpoints: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    bundle.save(out, dtype=None)
    Console().print(f"wrote {out} ({bundle.model_id}); check it with `patchsight model info {out}`")
