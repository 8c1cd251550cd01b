"""Command-line entry points. Thin: parse, load config, call one function, print a summary.

Errors a user can cause (bad files, bad config: every :class:`~fedaux.errors.FedauxError`) print
one line naming what is wrong and exit 2, without a traceback. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fedaux.config import load_config
from fedaux.data.reader import ON_BAD_FLOW
from fedaux.errors import FedauxError

USER_ERRORS = (FedauxError,)


def _guarded(prog: str, fn: Callable[[], int]) -> int:
    try:
        return fn()
    except USER_ERRORS as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (e.g. head)
        sys.stderr.close()
        return 0


# ---------------------------------------------------------------------------------------- fedaux-data
def data_main(argv: Sequence[str] | None = None) -> int:
    """``fedaux-data build|info``: build a flow store from a raw folder, or describe one."""
    parser = argparse.ArgumentParser(prog="fedaux-data", description=data_main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="turn any flow source (text flows, captures, JSON flows) into one compact store")
    build.add_argument("--raw", required=True, help="a flow source: a folder per class of *.txt flows or of captures, "
                                                    "a pcap/pcapng file, CertTA JSON flows")
    build.add_argument("--out", required=True, help="the .npz store to write")
    build.add_argument("--on-bad-flow", choices=ON_BAD_FLOW, default="error")
    build.add_argument("--format", default="auto", help="force a reader (default: detected from the content)")
    build.add_argument("--config", default=None, help="experiment config whose data.capture options to use")
    build.add_argument("--provenance", default=None, help="where the data came from, kept in the store")
    info = sub.add_parser("info", help="flows, packets and derived-target distributions of a data set")
    info.add_argument("--data", default=None, help="a store file or raw folder (default: the embedded store)")
    info.add_argument("--config", default=None, help="experiment config whose data.targets to show")
    info.add_argument("--on-bad-flow", choices=ON_BAD_FLOW, default="error")
    info.add_argument("--format", default="auto", help="force a reader (default: detected from the content)")
    parser.epilog = ("Config overrides (key=value) follow, e.g. data.capture.filter='udp port 443' "
                     "data.capture.idle_timeout_s=30 data.capture.length=ip")
    args, overrides = parser.parse_known_args(argv)
    if args.command == "build":
        return _guarded("fedaux-data", lambda: _build(args, overrides))
    return _guarded("fedaux-data", lambda: _info(args.data, args.config, args.on_bad_flow, args.format, overrides))


def _build(args: argparse.Namespace, overrides: list[str]) -> int:
    from dataclasses import replace

    from fedaux.data.features import short_flows_note
    from fedaux.data.sources import load_flows

    cfg = load_config(args.config, [f"data.on_bad_flow={args.on_bad_flow}", f"data.format={args.format}", *overrides])
    flows, skipped = load_flows(args.raw, cfg.data)
    for message in skipped:
        print(f"skipped: {message}", file=sys.stderr)
    flows = replace(flows, provenance=args.provenance or f"fedaux-data build from '{Path(args.raw).name}'")
    checksum = flows.save(args.out)
    size_mb = Path(args.out).stat().st_size / 1e6
    print(
        f"wrote {args.out}: {flows.num_flows} flows, {len(flows.class_names)} classes, {flows.num_packets:,} packets "
        f"({flows.packet_length} lengths), {size_mb:.2f} MB, skipped {len(skipped)} bad flow(s)\nchecksum {checksum}"
    )
    short = short_flows_note(flows, int(cfg.data.min_packets))
    if short:
        print(f"{short}: the store keeps them, training leaves them out (set data.min_packets lower to keep them)")
    return 0


def _info(data: str | None, config: str | None, on_bad_flow: str, format: str, overrides: list[str]) -> int:
    from fedaux.data.features import short_flows_note
    from fedaux.data.sources import load_flows
    from fedaux.data.targets import compute_targets

    extra = [f"data.on_bad_flow={on_bad_flow}"] + ([f"data.format={format}"] if format != "auto" else [])
    cfg = load_config(config, [*extra, *overrides])
    flows, skipped = load_flows(data if data is not None else cfg.data.root, cfg.data)
    counts = flows.packet_counts()
    min_packets = int(cfg.data.min_packets)
    print(f"source: {data or cfg.data.root or 'embedded store'} ({flows.provenance or 'no provenance recorded'})")
    print(f"checksum: {flows.checksum()}")
    groups = len(set(flows.flow_groups)) if flows.flow_groups else flows.num_flows
    print(f"{flows.num_flows} flows, {len(flows.class_names)} classes, {flows.num_packets:,} packets"
          f" ({flows.packet_length} lengths), {groups} capture group(s)"
          + (f", {len(skipped)} bad flow(s) skipped" if skipped else ""))
    short = short_flows_note(flows, min_packets)
    if short:
        print(f"{short}: training leaves them out (set data.min_packets lower to keep them)")
    print(f"\n{'class':<16}{'flows':>7}{'packets':>11}{f'< {min_packets} packets':>16}")
    for label, name in enumerate(flows.class_names):
        mine = flows.labels == label
        print(f"{name:<16}{int(mine.sum()):>7}{int(counts[mine].sum()):>11,}{int((counts[mine] < min_packets).sum()):>16}")
    specs = {n: dict(s) for n, s in cfg.data.targets.items()}
    targets = compute_targets(specs, flows)
    for name, target in targets.items():
        print(f"\ntarget {name} ({cfg.data.targets[name].fn})")
        if target.is_classification:
            hist = np.bincount(target.values, minlength=target.num_classes)
            for cls, count in zip(target.class_names, hist):
                print(f"  {cls:<22}{int(count):>5} flows")
        else:
            v = target.values
            print(f"  min {v.min():.4g}  median {np.median(v):.4g}  max {v.max():.4g}")
    print("\n" + _quantile_bins_snippet(specs, flows, counts >= min_packets, min_packets))
    return 0


def _quantile_bins_snippet(specs: dict[str, dict], flows, kept: np.ndarray, min_packets: int) -> str:
    """Bins at the quantiles of every derived target, as YAML to paste under the config's ``data:``.

    A binned target keeps its number of classes (3 classes: terciles, 4: quartiles); a regression
    target gets quartiles, commented out, since binning it makes its head a classifier. The
    quantiles are over the flows training keeps (``kept``), or every flow when none is kept.
    """
    from fedaux.data.targets import quantile_bins, raw_target_values, resolve_target_fn, traffic_class

    names = {2: "medians", 3: "terciles", 4: "quartiles", 5: "quintiles", 10: "deciles"}
    pool = kept if kept.any() else np.ones_like(kept)
    lines = []
    for name, spec in specs.items():
        fn_spec = spec.get("fn") or name
        if resolve_target_fn(fn_spec, key=f"data.targets.{name}.fn") is traffic_class:
            continue
        values = raw_target_values(name, fn_spec, flows)[pool]
        classes = len(spec["bins"]) + 1 if spec.get("bins") else 4
        edges = quantile_bins(values, classes)
        sizes = np.bincount(np.digitize(values, edges), minlength=len(edges) + 1).tolist()
        bins = "[" + ", ".join(np.format_float_positional(e, trim="-") for e in edges) + "]"
        what = names.get(classes, f"{classes}-quantiles")
        note = f"# {what}: {len(edges) + 1} classes of {', '.join(map(str, sizes))} flows"
        if len(edges) + 1 < classes:
            note += f" (tied values leave fewer than {classes})"
        fn_text = fn_spec if fn_spec.isidentifier() else json.dumps(fn_spec)  # an import path's ':' needs quotes
        entry = f"{name}: {{fn: {fn_text}, bins: {bins}}}"
        if not spec.get("bins"):
            entry, note = f"# {entry}", note + "; uncomment to make this regression target a classification one"
        lines.append(f"    {entry}   {note}")
    if not lines:
        return "no derived target to bin"
    scope = (f"the {int(pool.sum()):,} flows with at least data.min_packets={min_packets} packets" if kept.any()
             else f"all {len(pool):,} flows")
    return "\n".join([f"quantile bins over {scope}, to paste into the config:", "data:", "  targets:", *lines])


def main_data() -> None:
    sys.exit(data_main())


# ---------------------------------------------------------------------------------------- fedaux-train
def train_main(argv: Sequence[str] | None = None) -> int:
    """``fedaux-train --config FILE [key=value ...] [--key=value ...]``: run one federated experiment."""
    parser = argparse.ArgumentParser(
        prog="fedaux-train", description=train_main.__doc__,
        epilog="Overrides use the config's dotted keys, e.g. federated.rounds=5 or --model.optimizer.lr=0.003 "
               "(the form a W&B sweep agent passes).",
    )
    parser.add_argument("--config", default=None, help="experiment YAML (default: conf/quic.yaml, or the resumed "
                                                         "run's config.yaml with --resume)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    parser.add_argument("--dry-run", action="store_true", help="check the config and data, build the model, stop")
    args, overrides = parser.parse_known_args(argv)
    return _guarded("fedaux-train", lambda: _train(args.config, overrides, args.resume, args.dry_run))


def _train(config: str | None, overrides: list[str], resume: str | None, dry_run: bool) -> int:
    from fedaux.train import build_orchestrator, run

    if config is None:
        config = str(Path(resume) / "config.yaml") if resume else "conf/quic.yaml"
    cfg = load_config(config, overrides)
    if dry_run:
        orchestrator = build_orchestrator(cfg)
        sizes = [len(c) for c in orchestrator.data.clients]
        print(f"config ok: {len(sizes)} base stations with {min(sizes)}-{max(sizes)} samples, "
              f"{len(orchestrator.data.test)} test samples, heads {list(orchestrator.model.heads)}")
        return 0
    result = run(cfg, resume=resume)
    _print_summary(result.summary)
    return 0


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fedaux run summary", show_header=False)
    rows = [
        ("rounds", f"{summary.get('rounds')} ({summary['pretrain_rounds']} pre-training)" if summary.get("pretrain_rounds")
         else summary.get("rounds")),
        ("final accuracy", summary.get("final_accuracy")),
        ("best accuracy (round)", f"{summary.get('best_accuracy'):.4f} ({summary.get('best_round')})"),
        ("final macro F1", summary.get("final_f1")),
        (f"rounds to {summary.get('target_accuracy')}", summary.get("rounds_to_target") or "not reached"),
        ("MB to target", summary.get("MB_to_target")),
        ("total MB sent", summary.get("total_MB")),
        ("total wall time (s)", summary.get("total_time_s")),
        ("total compute (s)", summary.get("total_compute_s")),
        ("energy (kWh)", summary.get("total_energy_kwh") if summary.get("total_energy_kwh") is not None else "not measured"),
        ("run folder", summary.get("run_dir")),
    ]
    for name, value in rows:
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


def main_train() -> None:
    sys.exit(train_main())
