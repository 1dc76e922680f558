"""Energy of a run from codecarbon's offline tracker (no network), labelled with how it was obtained.

Where codecarbon cannot measure or estimate (not installed, no supported sensor or CPU model), the
result says "not measured" rather than inventing a number.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class Energy:
    kwh: float | None = None
    method: str = "not measured"


class EnergyMeter:
    """Context manager: ``with EnergyMeter() as meter: ...`` then ``meter.result``."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.tracker = None
        self.result = Energy()

    def __enter__(self) -> EnergyMeter:
        if not self.enabled:
            return self
        try:
            from codecarbon import OfflineEmissionsTracker

            logging.getLogger("codecarbon").setLevel(logging.ERROR)
            self.tracker = OfflineEmissionsTracker(country_iso_code="USA", save_to_file=False, log_level="error",
                                                   tracking_mode="process", measure_power_secs=5)
            self.tracker.start()
        except Exception as e:  # noqa: BLE001 - energy is optional; the run must not fail for it
            log.info("energy not measured: %s", e)
            self.tracker = None
        return self

    def __exit__(self, *exc) -> None:
        if self.tracker is None:
            return
        try:
            self.tracker.stop()
            kwh = float(self.tracker.final_emissions_data.energy_consumed)
            cpu = next((h for h in self.tracker._hardware if type(h).__name__ == "CPU"), None)
            mode = getattr(cpu, "_mode", None)
            if kwh > 0 and mode:
                model = getattr(cpu, "_model", "?")
                kind = "measured (RAPL)" if "rapl" in str(mode) else f"estimated ({mode}, CPU model {model!r})"
                self.result = Energy(kwh, f"codecarbon {kind}, process share")
        except Exception as e:  # noqa: BLE001
            log.info("energy not measured: %s", e)
