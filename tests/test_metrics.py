"""Per-round rows and the link model, on hand-made inputs."""

import pytest

from semcon.config import NetworkConfig
from semcon.rounds.metrics import Phases, RoundResult, modelled_transfer_s, round_row


def test_modelled_transfer_time_by_hand():
    net = NetworkConfig(uplink_mbps=8, downlink_mbps=80, latency_ms=50)
    ledger = [{"direction": "up", "encoded_bytes": 1_000_000}, {"direction": "up", "encoded_bytes": 500_000},
              {"direction": "down", "encoded_bytes": 1_000_000}]
    # slowest upload: 0.05 s + 8e6 bit / 8e6 bit/s = 1.05 s; download: 0.05 + 8e6 / 8e7 = 0.15 s
    assert modelled_transfer_s(ledger, net) == pytest.approx(1.2)
    assert modelled_transfer_s([], net) == 0.0


def test_a_round_row_carries_the_results_own_metrics_and_carves_its_timed_parts():
    phases = Phases()
    phases.seconds.update(generate=3.0, aggregate=2.0, train=5.0)
    ledger = [{"direction": "up", "encoded_bytes": 10, "raw_bytes": 30}, {"direction": "down", "encoded_bytes": 7,
                                                                          "raw_bytes": 9}]
    result = RoundResult(None, ["a"], {"b": "bad"}, metrics={"mean_agreement": 0.5}, seconds={"embed": 1.5})
    reports = {"a": {"steps": 2, "tokens": 40, "losses": [2.0, 1.0], "dropped_too_long": 0}}
    row = round_row(1, phases, ledger, reports, {}, result, NetworkConfig(), ["a", "b"])
    assert row["seconds"] == {"generate": 3.0, "aggregate": 0.5, "train": 5.0, "embed": 1.5}
    assert (row["bytes_up"], row["bytes_down"], row["raw_bytes_up"]) == (10, 7, 30)
    assert row["mean_agreement"] == 0.5 and row["accepted"] == ["a"] and row["rejected"] == {"b": "bad"}
    assert row["train_loss"] == {"a": [2.0, 1.0]} and row["completed"] == ["a"]
    plain = round_row(0, Phases(), [], {}, {"b": "gone"}, None, NetworkConfig(), ["a", "b"])
    assert "accepted" not in plain and plain["failed"] == {"b": "gone"}
