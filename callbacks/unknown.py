"""After the last round: the feature statistics and the suggested unknown-score thresholds of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from typing_extensions import override

from fedaux.federated.hooks import CALLBACKS, RoundCallback
from fedaux.unknown import (
    STATISTICS_FILE,
    FeatureStatistics,
    UnknownScoring,
    detection_report,
    threshold_keeping,
    window_outputs,
)


@CALLBACKS.register("unknown")
class UnknownTraffic(RoundCallback):
    """Writes what ``fedaux-predict`` and ``fedaux-eval`` need to score unknown traffic.

    * ``unknown.pt``: the :class:`~fedaux.unknown.FeatureStatistics` derived from the federated
      feature sums of the statistics pass (none under differential privacy);
    * ``summary.json``'s ``suggested_unknown_threshold``: per score, the threshold that keeps 95%
      of the run's held-out flows of known classes (its test flows, scored by the final global
      model), as ``suggested_min_confidence`` is the confidence 95% of the correct ones reach;
    * where the test set holds flows of ``data.exclude_classes``, ``unknown_detection``: per score
      the AUROC of known against those flows and the share of them rejected at that threshold.

    Args:
        run_dir: the run folder.
        shrinkage, temperature: ``model.unknown.shrinkage`` and ``temperature``.
        batch_size: windows per forward pass over the held-out flows.
    """

    def __init__(self, run_dir: str | Path, shrinkage: float | None = None, temperature: float = 1.0,
                 batch_size: int = 1024) -> None:
        self.run_dir = Path(run_dir)
        self.shrinkage, self.temperature, self.batch_size = shrinkage, temperature, batch_size

    @classmethod
    def from_config(cls, cfg, run_dir: Path) -> UnknownTraffic:
        unknown = cfg.model.unknown
        return cls(run_dir, unknown.shrinkage, float(unknown.temperature), int(cfg.federated.eval_batch_size))

    @override
    def add_to_summary(self, orchestrator, summary: dict[str, Any]) -> None:
        statistics = None
        sums = orchestrator.feature_sums
        if sums is not None and sums.windows > 0:
            statistics = FeatureStatistics.from_sums(sums, self.shrinkage)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            statistics.save(self.run_dir / STATISTICS_FILE)
            summary["feature_statistics"] = {"windows": sums.windows, "shrinkage": statistics.shrinkage}
        data, model = orchestrator.data, orchestrator.model
        test = data.test
        if len(test) == 0:
            return
        model.load_state_dict(orchestrator.global_state)
        outputs = window_outputs(model, test.x, self.batch_size, extras=True)
        flows, flow_of = np.unique(test.flow_index.numpy(), return_inverse=True)
        window_labels = test.targets[model.tasks[model.main_task].target]
        labels = torch.empty(len(flows), dtype=torch.int64).scatter_(0, torch.from_numpy(flow_of), window_labels)
        known = labels >= 0
        unknown = torch.from_numpy(np.isin(flows, data.unknown_test_flows))
        scoring = UnknownScoring(model.main_task, statistics, self.temperature)
        thresholds, detection = {}, {}
        for name in scoring.available(outputs):
            scores = scoring.score(name, outputs, flow_of, len(flows))
            thresholds[name] = threshold_keeping(scores[known])
            if unknown.any():
                scored = known | unknown
                detection[name] = detection_report(scores[scored], unknown[scored], thresholds[name])
        summary["suggested_unknown_threshold"] = thresholds
        if detection:
            summary["unknown_detection"] = detection
