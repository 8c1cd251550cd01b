"""``fedaux-predict``, ``fedaux-eval`` and ``fedaux-export``: use a trained run on new traffic.

Thin, like :mod:`fedaux.cli`: parse, call :mod:`fedaux.inference`, :mod:`fedaux.evaluation` or
:mod:`fedaux.export`, print. User errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedaux.cli import _guarded
from fedaux.errors import ConfigError, DataError
from fedaux.streaming import EMIT

STDIN_SOURCE = "-"


def _source_flows(source: str, spec: dict[str, Any], data_cfg, convert: bool):
    """Flows of ``source``, captures read with the model's packet-length quantity, others checked."""
    from omegaconf import OmegaConf

    from fedaux.data.sources import load_flows
    from fedaux.inference import check_packet_length

    data_cfg = OmegaConf.merge(data_cfg, {"capture": {"length": spec["packet_length"]}})
    flows, skipped = load_flows(source, data_cfg)
    for message in skipped:
        print(f"skipped: {message}", file=sys.stderr)
    return check_packet_length(flows, spec["packet_length"], convert, source)


def _model(run_dir: str | None, model_file: str | None, extras: bool = False):
    """(spec, predictor, run or None) from a run folder and/or an exported model file; with
    ``extras`` the run's own predictor also gives what the unknown scores read (logits, features)."""
    from fedaux.inference import TrainedRun, model_spec

    if model_file is not None:
        from fedaux.export import load_exported

        predictor, meta = load_exported(model_file)
        return meta, predictor, TrainedRun.load(run_dir) if run_dir else None
    if run_dir is None:
        raise ConfigError("give a run folder (RUN_DIR) or an exported model (--model FILE)")
    run = TrainedRun.load(run_dir)
    return model_spec(run), run.predictor(extras=extras), run


def _unknown_rule(args: argparse.Namespace, spec: dict[str, Any], run):
    """``--unknown-score`` / ``--unknown-threshold`` as an :class:`~fedaux.inference.UnknownRule`:
    the run's ``model.unknown.score`` by default (``msp`` with an exported model, which gives
    probabilities only); the threshold a number, ``suggested`` (the run's) or none (score shown only)."""
    from fedaux.inference import UnknownRule
    from fedaux.unknown import UNKNOWN_SCORES, UnknownScoring

    if run is not None and args.model is None:
        scoring = run.unknown_scoring()
    else:
        scoring = UnknownScoring(spec["main_task"], suggested=spec.get("suggested_unknown_threshold"))
    name = args.unknown_score or scoring.default
    UNKNOWN_SCORES.get(name, "--unknown-score")
    threshold = args.unknown_threshold
    if threshold is None:
        return UnknownRule(scoring, name)
    if threshold == "suggested":
        return UnknownRule(scoring, name, scoring.threshold(name))
    try:
        return UnknownRule(scoring, name, float(threshold))
    except ValueError:
        raise ConfigError(f"--unknown-threshold={threshold!r} must be a number or 'suggested'") from None


def _data_cfg(run, overrides: list[str]):
    """The ``data`` section for reading a source: the run's (defaults with only an exported model),
    with the command line's ``key=value`` overrides on top."""
    from omegaconf import OmegaConf

    from fedaux.config import load_config, normalise_overrides

    if run is None:
        return load_config(None, overrides).data
    return OmegaConf.merge(run.cfg, OmegaConf.from_dotlist(normalise_overrides(overrides))).data


# ---------------------------------------------------------------------------------------- predict
def predict_main(argv: Sequence[str] | None = None) -> int:
    """``fedaux-predict RUN_DIR --data SOURCE``: classify every flow of any source training accepts."""
    parser = argparse.ArgumentParser(prog="fedaux-predict", description=predict_main.__doc__,
                                     epilog="A flow's probability is the mean of its windows' softmax probabilities. "
                                            "Overrides (key=value) set data.capture.* for capture sources.")
    parser.add_argument("run_dir", nargs="?", help="a finished run folder")
    parser.add_argument("--data", required=True, help="text-flow folder, store, capture file/folder or JSON flows; "
                                                      "'-' reads a pcap/pcapng stream on standard input (tcpdump -w -)")
    parser.add_argument("--model", default=None, help="an exported model (fedaux-export) to run instead of the run's")
    parser.add_argument("--out", default=None, help="file to write (default: standard output)")
    parser.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    parser.add_argument("--min-confidence", type=float, default=0.0, metavar="P",
                        help="label a flow 'unknown' when its main-task probability is below P "
                             "(summary.json's suggested_min_confidence is a start)")
    parser.add_argument("--unknown-score", default=None, metavar="NAME",
                        help="the unknown score each row shows (unknown_score column; higher: less like any known "
                             "class): msp, energy, mahalanobis or relative_mahalanobis; default: the run's "
                             "model.unknown.score (msp with --model)")
    parser.add_argument("--unknown-threshold", default=None, metavar="T",
                        help="label a flow 'unknown' when its unknown score is above T; 'suggested': the threshold "
                             "that kept 95%% of the run's known held-out flows (summary.json)")
    parser.add_argument("--top", type=int, default=3, help="how many main-task classes to list per flow")
    parser.add_argument("--convert-lengths", action="store_true",
                        help="convert frame <-> ip packet lengths (Ethernet) when the source holds the other one")
    parser.add_argument("--emit", choices=EMIT, default=None,
                        help="with --data -: 'first' writes a flow's row once it has data.packets packets, 'final' "
                             "when it ends (idle for data.capture.idle_timeout_s, or the stream ends), 'both' "
                             "(default) writes both; the 'row' column says which")
    args, overrides = parser.parse_known_args(argv)
    if args.run_dir and "=" in args.run_dir and not Path(args.run_dir).exists():  # --model FILE key=value: no RUN_DIR
        overrides.insert(0, args.run_dir)
        args.run_dir = None
    return _guarded("fedaux-predict", lambda: _predict(args, overrides))


def _predict(args: argparse.Namespace, overrides: list[str]) -> int:
    from fedaux.inference import predict_flows

    if not 0.0 <= args.min_confidence <= 1.0:
        raise ConfigError(f"--min-confidence={args.min_confidence} must be in [0, 1]")
    if args.emit is not None and args.data != STDIN_SOURCE:
        raise ConfigError(f"--emit applies to a stream (--data {STDIN_SOURCE}); a file's flows get one row each")
    from fedaux.unknown import score_needs

    spec, predictor, run = _model(args.run_dir, args.model)
    unknown = _unknown_rule(args, spec, run)
    if args.model is None and score_needs(unknown.score):  # the run's model: logits and features too
        predictor = run.predictor(extras=True)
    if args.data == STDIN_SOURCE:
        return _predict_stream(args, spec, predictor, _data_cfg(run, overrides), unknown)
    flows = _source_flows(args.data, spec, _data_cfg(run, overrides), args.convert_lengths)
    rows = predict_flows(spec, flows, predictor, min_confidence=args.min_confidence, top=args.top, unknown=unknown)
    handle = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        if args.format == "jsonl":
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        else:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["flow"])
            writer.writeheader()
            writer.writerows(rows)
    finally:
        if args.out:
            handle.close()
    short = flows.num_flows - len(rows)
    rejected = (f"; {unknown.score} score above {unknown.threshold:g}: "
                f"{sum(1 for r in rows if r['unknown_score'] > unknown.threshold)} unknown"
                if unknown.threshold is not None else f"; unknown_score: {unknown.score}")
    print(f"{len(rows)} flows classified" + (f", {short} shorter than the minimum packets left out" if short else "")
          + rejected + (f"; written to {args.out}" if args.out else ""), file=sys.stderr)
    return 0


def _predict_stream(args: argparse.Namespace, spec: dict[str, Any], predictor, data_cfg, unknown) -> int:
    """``--data -``: rows of the capture on standard input as they fall due (:mod:`fedaux.streaming`)."""
    import torch

    from fedaux.streaming import RowWriter, StreamPredictor

    streamer = StreamPredictor(spec, predictor, idle_timeout_s=float(data_cfg.capture.idle_timeout_s),
                               emit=args.emit or "both", min_confidence=args.min_confidence, top=args.top,
                               flow_filter=str(data_cfg.capture.filter or ""), unknown=unknown)
    handle = open(args.out, "w", newline="") if args.out else sys.stdout
    # One torch thread, as exported models run: a stream's batches are a few windows, which gain
    # nothing from threads and, on a busy machine, wait for a descheduled one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        writer = RowWriter(handle, args.format, streamer.columns)
        for row in streamer.rows(sys.stdin.buffer):
            writer.write(row)
    finally:
        torch.set_num_threads(threads)
        if args.out:
            handle.close()
    print(streamer.summary() + (f"; written to {args.out}" if args.out else ""), file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------- eval
def eval_main(argv: Sequence[str] | None = None) -> int:
    """``fedaux-eval RUN_DIR [--data SOURCE]``: score a run on labelled flows (default: its held-out flows)."""
    parser = argparse.ArgumentParser(prog="fedaux-eval", description=eval_main.__doc__)
    parser.add_argument("run_dir", help="a finished run folder")
    parser.add_argument("--data", default=None, help="labelled flows (class = folder or label); default: the run's "
                                                     "own held-out flows")
    parser.add_argument("--model", default=None, help="score an exported model instead of the run's")
    parser.add_argument("--out", default=None, help="folder for eval.json and the confusion matrices "
                                                    "(default: RUN_DIR/eval)")
    parser.add_argument("--convert-lengths", action="store_true")
    args, overrides = parser.parse_known_args(argv)
    return _guarded("fedaux-eval", lambda: _eval(args, overrides))


def _held_out(run) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, int]]:
    """The run's test windows, their flows, the flows' labels per task and, for the test flows of
    ``data.exclude_classes`` (main label IGNORE_INDEX: classes the model does not know), their
    number per class."""
    from fedaux.data.samples import build_federated_data

    cfg = run.cfg
    data = build_federated_data(cfg.data, cfg.federated.base_stations, cfg.federated.edge_servers, cfg.seed,
                                main_target=cfg.model.heads[cfg.model.main_task].target)
    flows, flow_index = np.unique(data.test.flow_index.numpy(), return_inverse=True)
    labels = {t: data.targets[run.model.tasks[t].target].values[flows] for t in run.tasks
              if run.model.tasks[t].kind == "classification"}
    names = np.asarray(data.flows.class_names)[data.flows.labels[data.unknown_test_flows]]
    unknown = {str(name): int((names == name).sum()) for name in sorted(set(names.tolist()))}
    return data.test.x.numpy(), flow_index, labels, unknown


def _labelled_source(run, spec, source: str, data_cfg, convert: bool):
    from fedaux.data.targets import compute_targets
    from fedaux.inference import flow_windows

    flows = _source_flows(source, spec, data_cfg, convert)
    x, flow_index, short = flow_windows(flows, spec["features"], spec["packets"], spec["windowing"])
    if short:
        print(f"{len(short)} of {flows.num_flows} flows have fewer than the run's data.min_packets="
              f"{spec['windowing']['min_packets']} packets: left out of the scores", file=sys.stderr)
    if len(x) == 0:
        raise DataError(f"{source}: no flow has the {spec['windowing']['min_packets']} packets (data.min_packets) "
                        "the run cuts windows from; nothing to score")
    kept, flow_index = np.unique(flow_index, return_inverse=True)
    targets = compute_targets({n: dict(s) for n, s in run.cfg.data.targets.items()}, flows)
    labels, unknown = {}, {}
    for task in spec["tasks"]:
        target = targets[run.model.tasks[task].target]
        known = spec["class_names"][task]
        names = target.class_names
        index = np.array([known.index(n) if n in known else -1 for n in names], dtype=np.int64)
        labels[task] = index[target.values[kept]]
        if task == spec["main_task"]:
            for name in sorted(set(names) - set(known)):
                unknown[name] = int((np.asarray(names)[target.values[kept]] == name).sum())
    return x, flow_index, labels, unknown


def _eval(args: argparse.Namespace, overrides: list[str]) -> int:
    from fedaux.evaluation import evaluate, write_report

    spec, predictor, run = _model(args.run_dir, args.model, extras=True)
    if args.data is None:
        x, flow_index, labels, unknown = _held_out(run)
    else:
        x, flow_index, labels, unknown = _labelled_source(run, spec, args.data, _data_cfg(run, overrides),
                                                          args.convert_lengths)
    report = evaluate(run, x, flow_index, labels, predictor, unknown)
    report["data"] = args.data or "the run's held-out flows"
    written = write_report(report, run, Path(args.out) if args.out else run.run_dir / "eval")
    for task, head in report["heads"].items():
        w, f = head["window"], head["flow"]
        print(f"{task}: window accuracy {w['accuracy']:.4f} (macro F1 {w['macro_f1']:.4f}, {w['count']} windows); "
              f"flow accuracy {f['accuracy']:.4f} (macro F1 {f['macro_f1']:.4f}, {f['count']} flows)")
    for name, count in report["unknown_classes"].items():
        print(f"class {name!r} is not one the model knows: {count} flow(s), left out of the scores")
    detection = report.get("unknown_detection", {})
    if detection.get("unknown_flows") and detection.get("known_flows"):
        for name, score in detection["scores"].items():
            print(f"unknown score {name}: AUROC {score['auroc']:.4f} ({detection['unknown_flows']} unknown against "
                  f"{detection['known_flows']} known flows); {score['rejected_at_95_known']:.1%} of unknown flows "
                  "rejected at the threshold keeping 95% of known flows")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


# ---------------------------------------------------------------------------------------- export
def export_main(argv: Sequence[str] | None = None) -> int:
    """``fedaux-export RUN_DIR --format onnx|onnx-int8|torchscript``: a self-contained model for a base station."""
    parser = argparse.ArgumentParser(prog="fedaux-export", description=export_main.__doc__)
    parser.add_argument("run_dir", help="a finished run folder")
    parser.add_argument("--format", choices=("onnx", "onnx-int8", "torchscript"), required=True,
                        help="onnx: exact; onnx-int8: quantised, about 4x faster on CPU; torchscript: exact")
    parser.add_argument("--out", default=None, help="file to write (default: RUN_DIR/model.onnx, model-int8.onnx "
                                                    "or model.ts)")
    args = parser.parse_args(argv)
    return _guarded("fedaux-export", lambda: _export(args))


def _export(args: argparse.Namespace) -> int:
    from fedaux.export import export_run
    from fedaux.inference import TrainedRun

    run = TrainedRun.load(args.run_dir)
    default = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx", "torchscript": "model.ts"}[args.format]
    out = Path(args.out) if args.out else run.run_dir / default
    path = export_run(run, args.format, out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): run it with fedaux-predict --model {path} --data SOURCE")
    return 0


def main_predict() -> None:
    sys.exit(predict_main())


def main_eval() -> None:
    sys.exit(eval_main())


def main_export() -> None:
    sys.exit(export_main())
