"""Energy per round, measured by codecarbon from hardware power counters where they exist."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from fedaux.federated.hooks import CALLBACKS, RoundCallback, at_target

if TYPE_CHECKING:
    from codecarbon import OfflineEmissionsTracker

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # say each reason once per process, not once per run of a benchmark
RAPL = Path("/sys/class/powercap/intel-rapl")


@CALLBACKS.register("energy")
class EnergyTracker(RoundCallback):
    """Adds ``energy/kwh`` per round and ``energy/cum_kwh`` (codecarbon's offline tracker).

    Energy is only reported when codecarbon reads real CPU power counters (Intel RAPL). Where it
    cannot, codecarbon would fall back to a constant per-thread guess; this callback then disables
    itself, says why in ``reason``, and logs no energy rather than a fabricated figure.
    """

    def __init__(self, enabled: bool = True, country_iso_code: str = "USA") -> None:
        self.enabled = enabled
        self.country_iso_code = country_iso_code
        self.reason = "" if enabled else "disabled by config (logging.energy=false)"
        self._tracker: OfflineEmissionsTracker | None = None
        self._round_kwh: float | None = None
        self._total_kwh = 0.0

    @classmethod
    def from_config(cls, cfg, run_dir: Path) -> EnergyTracker:
        return cls(enabled=cfg.logging.energy)

    @override
    def on_run_start(self, orchestrator) -> None:
        if not self.enabled:
            return
        if not any(RAPL.glob("intel-rapl:*/energy_uj")):
            self._disable(f"no readable RAPL power counters at {RAPL}; codecarbon could only guess a constant power")
            return
        try:
            from codecarbon import OfflineEmissionsTracker

            self._tracker = OfflineEmissionsTracker(
                country_iso_code=self.country_iso_code, save_to_file=False, log_level="error", tracking_mode="process"
            )
            self._tracker.start()
        except Exception as err:  # codecarbon probes hardware in many ways; any failure disables it
            self._disable(f"codecarbon could not start ({type(err).__name__}: {err})")

    def _disable(self, reason: str) -> None:
        self.enabled, self.reason, self._tracker = False, reason, None
        if reason not in _WARNED:
            _WARNED.add(reason)
            log.warning("energy not measured: %s", reason)

    @override
    def on_round_start(self, orchestrator, rnd: int, clients: list[int]) -> None:
        if self._tracker is not None:
            self._tracker.start_task(f"round-{rnd}")

    @override
    def log_round(self, orchestrator, rnd: int, record: dict[str, Any]) -> None:
        if self._tracker is None:
            return
        kwh = float(self._tracker.stop_task().energy_consumed)
        self._total_kwh += kwh
        record["energy/kwh"] = kwh
        record["energy/cum_kwh"] = self._total_kwh

    @override
    def add_to_summary(self, orchestrator, summary: dict[str, Any]) -> None:
        # None, not 0, when nothing was measured: "not measured" must not read as "no energy used".
        measured = any("energy/cum_kwh" in r for r in orchestrator.history)
        summary["total_energy_kwh"] = self._total_kwh if measured else None
        summary["energy_kwh_to_target"] = at_target(orchestrator, summary, "energy/cum_kwh")

    @override
    def on_run_teardown(self, orchestrator, failed: bool) -> None:
        if self._tracker is not None:
            self._tracker.stop()
            self._tracker = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"total_kwh": self._total_kwh}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._total_kwh = float(state["total_kwh"])
