"""Learning from few labels (issue 22, item 3): pre-training rounds on the auxiliary tasks,
FixMatch pseudo-labels on unlabelled windows, a contrastive NT-Xent head, and the window
augmentations they use. Each option trains by config on the sequential and the worker-process
engines (Flower in the slow suite), with its behaviour checked, and each refuses bad options.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedaux.config import load_config
from fedaux.data.augment import AUGMENTATIONS, ChannelLayout, build_augmentation, packet_mask
from fedaux.errors import ConfigError
from fedaux.federated.hooks import RoundCallback
from fedaux.model.semi import nt_xent, pseudo_label_loss
from fedaux.train import run
from tests.conftest import REPO

FEATURES = ("iat", "signed_length", "elapsed")
LOG_IAT, LOG_ELAPSED = math.log1p(1e7), math.log1p(1e9)
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ---------------------------------------------------------------------------------------- windows
def make_windows(seed: int, batch: int, packets: int, features=FEATURES) -> torch.Tensor:
    """Windows as fedaux cuts them, from known gaps and lengths: ``(batch, C, packets)``, each with
    1..packets real packets then padding, channels in the order ``features`` names them."""
    rng = np.random.default_rng(seed)
    real = rng.integers(1, packets + 1, size=batch)
    gaps = np.exp(rng.uniform(0, math.log(1e6), size=(batch, packets)))  # 1 us .. 1 s, below saturation
    starts_flow = rng.random(batch) < 0.3  # some windows start their flow: no gap, no time before
    gaps[starts_flow, 0] = 0.0
    since_start = np.where(starts_flow[:, None], 0.0, rng.uniform(0, 1e6, size=(batch, 1))) + np.cumsum(gaps, axis=1)
    lengths = rng.integers(40, 1501, size=(batch, packets)) * np.where(rng.random((batch, packets)) < 0.5, 1, -1)
    values = {"iat": np.log1p(gaps) / LOG_IAT, "signed_length": lengths / 1500.0,
              "elapsed": np.log1p(since_start) / LOG_ELAPSED}
    x = np.stack([values[f] for f in features], axis=1)
    x = x * (np.arange(packets)[None, :] < real[:, None])[:, None, :]  # padding after the real packets
    return torch.from_numpy(x.astype(np.float32))


def decode(x: torch.Tensor, features=FEATURES) -> dict[str, torch.Tensor]:
    """Gaps and times since the flow's start in microseconds, lengths in bytes (float64)."""
    channel = {f: x[:, features.index(f)].double() for f in features}
    out = {"gap": torch.expm1(channel["iat"] * LOG_IAT), "t": torch.expm1(channel["elapsed"] * LOG_ELAPSED)}
    if "signed_length" in channel:
        out["length"] = channel["signed_length"] * 1500
    return out


def assert_times_consistent(x: torch.Tensor, mask: torch.Tensor) -> None:
    """Each real packet's elapsed time is its predecessor's plus its gap, within the float32
    encoding's tolerance; a saturated gap (10 s or more reads as 10 s) only bounds the step below."""
    d = decode(x)
    step, gap = d["t"][:, 1:] - d["t"][:, :-1], d["gap"][:, 1:]
    both = mask[:, 1:] & mask[:, :-1]
    tolerance = 2e-5 * d["t"][:, 1:] + 1e-3 * gap + 1.0
    saturated = x[:, FEATURES.index("iat"), 1:] >= 1
    assert torch.where(saturated, step >= gap - tolerance, (step - gap).abs() <= tolerance)[both].all()


windows = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(2, 24))
AUG_OPTIONS = {"window_shift": [{}, {"max_shift": 30}], "packet_drop": [{}, {"p": 0.9}],
           "iat_jitter": [{}, {"sigma": 2.0}], "length_noise": [{}, {"std_bytes": 800.0}]}


def test_every_built_in_augmentation_is_tested():
    assert set(AUGMENTATIONS.names()) <= set(AUG_OPTIONS)


@PROPERTY
@given(windows, st.sampled_from([(name, i) for name in AUG_OPTIONS for i in range(2)]), st.integers(0, 1000))
def test_augmentations_keep_shape_dtype_ranges_padding_and_time(window, choice, seed):
    x = make_windows(*window)
    name, i = choice
    aug = build_augmentation([{"name": name, **AUG_OPTIONS[name][i]}], FEATURES, "test")
    layout = ChannelLayout(FEATURES)
    before = packet_mask(x, layout)
    assert_times_consistent(x, before)  # the windows are what fedaux cuts

    y = aug(x, torch.Generator().manual_seed(seed))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.equal(y, aug(x, torch.Generator().manual_seed(seed)))  # repeatable under a seed
    after = packet_mask(y, layout)
    assert (after.sum(1) >= 1).all() and (after.sum(1) <= before.sum(1)).all()
    assert (after[:, 1:] <= after[:, :-1]).all()  # real packets first, padding after
    assert (y.permute(0, 2, 1)[~after] == 0).all()  # padding is zero in every channel
    iat, length, elapsed = y[:, 0], y[:, 1], y[:, 2]
    assert iat.min() >= 0 and iat.max() <= 1 and elapsed.min() >= 0 and elapsed.max() <= 1
    assert length.abs().max() <= 1 and (length.abs()[after] >= 1 / 1500 - 1e-7).all()
    assert_times_consistent(y, after)


def test_an_augmentation_draws_from_its_generator_only():
    x = make_windows(0, 8, 30)
    aug = build_augmentation(["window_shift", "packet_drop", "iat_jitter", "length_noise"], FEATURES, "test")
    state = torch.get_rng_state()
    a, b = aug(x, torch.Generator().manual_seed(1)), aug(x, torch.Generator().manual_seed(2))
    assert torch.equal(state, torch.get_rng_state())  # the global generator did not move
    assert not torch.equal(a, b)


def test_an_empty_batch_stays_empty():
    """A batch with no unlabelled window gives the consistency views nothing to augment."""
    aug = build_augmentation(["window_shift", "packet_drop", "iat_jitter", "length_noise"], FEATURES, "test")
    assert aug(torch.zeros(0, 3, 60)).shape == (0, 3, 60)


def test_zero_strength_leaves_windows_as_they_were():
    x = make_windows(1, 6, 20)
    for name, options in [("window_shift", {"max_shift": 0}), ("packet_drop", {"p": 0.0})]:
        assert torch.equal(build_augmentation([{"name": name, **options}], FEATURES, "t")(x), x), name
    for name, options in [("iat_jitter", {"sigma": 0.0}), ("length_noise", {"std_bytes": 0.0})]:
        torch.testing.assert_close(build_augmentation([{"name": name, **options}], FEATURES, "t")(x), x, atol=1e-6, rtol=0)


def test_window_shift_is_the_window_cut_later():
    x = make_windows(2, 16, 20)
    y = build_augmentation([{"name": "window_shift", "max_shift": 5}], FEATURES, "t")(x, torch.Generator().manual_seed(0))
    shifts = []
    for b in range(len(x)):
        found = [s for s in range(6) if torch.equal(y[b, :, :20 - s], x[b, :, s:]) and (y[b, :, 20 - s:] == 0).all()]
        assert found, b
        shifts.append(found[0])
    assert max(shifts) > 0


def test_packet_drop_keeps_an_ordered_subsequence_and_carries_the_lost_gaps():
    x = make_windows(3, 16, 30)
    y = build_augmentation([{"name": "packet_drop", "p": 0.5}], FEATURES, "t")(x, torch.Generator().manual_seed(0))
    layout = ChannelLayout(FEATURES)
    dx, dy = decode(x), decode(y)
    for b in range(len(x)):
        real_x, real_y = packet_mask(x, layout)[b], packet_mask(y, layout)[b]
        kept_lengths = y[b, 1, real_y].tolist()
        kept_times = y[b, 2, real_y].tolist()
        # The kept packets are the input's in order, the first among them.
        positions, start = [], 0
        for length, elapsed in zip(kept_lengths, kept_times):
            j = next(j for j in range(start, int(real_x.sum())) if x[b, 1, j] == length and x[b, 2, j] == elapsed)
            positions.append(j)
            start = j + 1
        assert positions[0] == 0
        # Each kept packet's gap is the sum of the input's gaps since the previous kept packet.
        for k in range(1, len(positions)):
            lost = dx["gap"][b, positions[k - 1] + 1:positions[k] + 1].sum()
            assert dy["gap"][b, k] == pytest.approx(float(lost), rel=1e-5, abs=1e-3)
    assert (packet_mask(y, layout).sum(1) < packet_mask(x, layout).sum(1)).any()


def test_length_noise_keeps_directions_and_touches_lengths_only():
    x = make_windows(4, 8, 20)
    y = build_augmentation([{"name": "length_noise", "std_bytes": 100.0}], FEATURES, "t")(x, torch.Generator().manual_seed(0))
    assert torch.equal(torch.sign(y[:, 1]), torch.sign(x[:, 1]))
    assert torch.equal(y[:, [0, 2]], x[:, [0, 2]]) and not torch.equal(y[:, 1], x[:, 1])


def test_augmentations_follow_the_channel_order_and_work_without_a_length_channel():
    order = ("elapsed", "iat", "signed_length")
    x = make_windows(5, 8, 20, order)
    y = build_augmentation(["packet_drop", "iat_jitter"], order, "t")(x, torch.Generator().manual_seed(0))
    reordered = y[:, [order.index(f) for f in FEATURES]]
    assert_times_consistent(reordered, packet_mask(reordered, ChannelLayout(FEATURES)))
    no_length = ("iat", "elapsed")
    x = make_windows(6, 8, 20, no_length)
    y = build_augmentation(["window_shift", "packet_drop", "iat_jitter"], no_length, "t")(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    with pytest.raises(ConfigError, match=r"key\[0\] \(length_noise\): length_noise needs the 'signed_length' feature"):
        build_augmentation(["length_noise"], no_length, "key")


@pytest.mark.parametrize("specs, message", [
    (["packet_loss"], r"key\[0\]='packet_loss' is not valid; choose one of \['iat_jitter', 'length_noise', 'packet_drop', "
                      r"'window_shift'\]"),
    ([{"name": "packet_drop", "q": 0.1}], r"key\[0\]\.q: packet_drop has no option 'q'; its options: \{'p': 0.1\}"),
    ([{"name": "packet_drop", "p": 1.5}], r"key\[0\] \(packet_drop\): p=1.5 must be in \[0, 1\)"),
    (["window_shift", {"name": "window_shift", "max_shift": 2.5}], r"key\[1\]\.max_shift=2.5: window_shift's max_shift "
                                                                   r"must be an integer"),
    ([{"name": "iat_jitter", "sigma": "big"}], r"key\[0\]\.sigma='big': iat_jitter's sigma must be a number"),
    ([{"p": 0.1}], r"key\[0\]=\{'p': 0.1\} needs a name"),
])
def test_bad_augmentations_name_the_key_and_what_is_valid(specs, message):
    with pytest.raises(ConfigError, match=message):
        build_augmentation(specs, FEATURES, "key")


# ---------------------------------------------------------------------------------------- losses
def test_nt_xent_equals_a_hand_computation():
    z1 = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]])
    z2 = torch.tensor([[2.0, 1.0, 1.0], [-1.0, 0.0, 3.0]])
    tau = 0.7
    z = [[v / math.sqrt(sum(c * c for c in row)) for v in row] for row in (z1 + 0).tolist() + z2.tolist()]
    sim = [[sum(a * b for a, b in zip(u, v)) / tau for v in z] for u in z]
    positive = {0: 2, 1: 3, 2: 0, 3: 1}
    rows = [-math.log(math.exp(sim[i][positive[i]]) / sum(math.exp(sim[i][k]) for k in range(4) if k != i))
            for i in range(4)]
    assert float(nt_xent(z1, z2, tau)) == pytest.approx(sum(rows) / 4, rel=1e-6)


def test_nt_xent_is_minimised_by_identical_views():
    """Every row's denominator sums over the same 2N embeddings whichever row is paired with which,
    so pairing each window with itself (similarity 1, the largest) gives the least loss of all
    pairings; and views moved away from the window by noise score worse the further they move."""
    torch.manual_seed(0)
    z = torch.randn(4, 8)
    same = float(nt_xent(z, z))
    for order in itertools.permutations(range(4)):
        if list(order) != [0, 1, 2, 3]:
            assert same < float(nt_xent(z, z[list(order)])), order
    z = torch.randn(16, 32)
    noise = torch.randn(16, 32)
    losses = [float(nt_xent(z, z + scale * noise)) for scale in (0.0, 0.1, 0.3, 1.0, 3.0)]
    assert losses == sorted(losses) and losses[0] < losses[1]


def test_pseudo_labels_come_only_from_predictions_at_the_threshold():
    weak = torch.tensor([[3.0, 0.0, 0.0],    # 0.910: confident, class 0
                         [0.0, 0.2, 0.0],    # 0.380: not
                         [0.0, 0.0, 5.0],    # 0.987: confident, class 2
                         [math.log(9.0), 0.0, -30.0]], requires_grad=True)  # exactly 0.9: confident (>=)
    strong = torch.tensor([[0.5, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
    loss, confident = pseudo_label_loss(weak, strong, threshold=0.9)
    assert confident.tolist() == [True, False, True, True]
    hand = (F.cross_entropy(strong[0], torch.tensor(0)) + F.cross_entropy(strong[2], torch.tensor(2))
            + F.cross_entropy(strong[3], torch.tensor(0))) / 4  # FixMatch divides by every unlabelled window
    assert float(loss.detach()) == pytest.approx(float(hand.detach()), rel=1e-6)
    loss.backward()
    assert torch.equal(strong.grad[1], torch.zeros(3))  # the unconfident window teaches nothing
    assert strong.grad[[0, 2, 3]].abs().sum() > 0
    assert weak.grad is None  # no gradient through the weak view
    nothing, none = pseudo_label_loss(weak, strong, threshold=0.999)
    assert float(nothing.detach()) == 0.0 and not none.any()
    empty, _ = pseudo_label_loss(torch.zeros(0, 3), torch.zeros(0, 3), 0.5)
    assert float(empty) == 0.0


# ---------------------------------------------------------------------------------------- training
QUICK = ["federated.rounds=2", "federated.base_stations=2", "federated.edge_servers=1", "data.subflows_per_flow=2",
         "logging.progress=false", "logging.energy=false", "logging.plots=false", "logging.wandb.mode=disabled"]
ENGINES = {"sequential": ["federated.workers=1"], "workers": ["federated.workers=2"], "flower": ["federated.engine=flower",
                                                                                                 "federated.flower.torch_threads=1"]}
PRETRAIN = ["federated.pretrain_rounds=1"]
CONSISTENCY = ["model.consistency.weight=1.0", "model.consistency.threshold=0.5"]
CONTRASTIVE = ["model.heads.contrastive.kind=contrastive", "model.heads.contrastive.hidden=64",
               "model.heads.contrastive.out_features=32"]


class GlobalStates(RoundCallback):
    """Keeps the global state after every round."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_aggregated(self, orchestrator, rnd, aggregate) -> None:
        self.states.append({k: v.clone() for k, v in aggregate.global_state.items()})


def _cfg(tmp_path, *overrides: str):
    return load_config(REPO / "conf" / "quic.yaml", [f"output_dir={tmp_path / 'out'}", *QUICK, *overrides])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The federation's data, built once: the options change the model, not the data."""
    from fedaux.data.samples import build_federated_data

    cfg = _cfg(tmp_path_factory.mktemp("data"))
    return build_federated_data(cfg.data, cfg.federated.base_stations, cfg.federated.edge_servers, cfg.seed)


def _finite_losses(history: list[dict[str, Any]]) -> None:
    for record in history:
        losses = {k: v for k, v in record.items() if k.startswith(("train/loss/", "train/global_loss", "val/loss"))}
        assert losses and all(math.isfinite(v) for v in losses.values()), losses


def _split(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    main = {k: v for k, v in state.items() if k.startswith("heads.traffic_class.")}
    # The trunk's weights: a convolution's bias before BatchNorm gets no gradient whatever the loss.
    trunk = {k: v for k, v in state.items() if k.startswith("trunk.") and k.endswith(".weight")}
    return main, trunk


def _check_pretraining(result, states: list[dict[str, torch.Tensor]]) -> None:
    history = result.history
    assert [(r["phase"], r["phase/round"]) for r in history] == [("pretrain", 1), ("finetune", 1)]
    assert history[0]["train/loss/traffic_class"] == 0.0 and history[1]["train/loss/traffic_class"] > 0
    assert result.summary["pretrain_rounds"] == 1
    initial_main, initial_trunk = _split(result.orchestrator.initial_state)
    after_pretraining_main, after_pretraining_trunk = _split(states[0])
    finetuned_main, _ = _split(states[1])
    assert all(torch.equal(initial_main[k], after_pretraining_main[k]) for k in initial_main)
    assert all(not torch.equal(initial_trunk[k], after_pretraining_trunk[k]) for k in initial_trunk)
    assert all(not torch.equal(initial_main[k], finetuned_main[k]) for k in initial_main)


def _check_consistency(result, states) -> None:
    for record in result.history:
        assert 0 < record["train/consistency/confident"] <= 1, record
        assert record["train/consistency/loss"] > 0


def _check_contrastive(result, states) -> None:
    record = result.history[-1]
    assert record["train/loss/contrastive"] > 0 and 0 < record["train/weight/contrastive"] < 1  # RLW draws it
    assert states[-1]["heads.contrastive.net.2.weight"].shape == (32, 64)
    assert not torch.equal(states[-1]["heads.contrastive.net.2.weight"],
                           result.orchestrator.initial_state["heads.contrastive.net.2.weight"])
    assert "val/acc/contrastive" not in record  # it predicts no class


OPTIONS = {"pretrain": (PRETRAIN, _check_pretraining), "consistency": (CONSISTENCY, _check_consistency),
           "contrastive": (CONTRASTIVE, _check_contrastive)}


@pytest.mark.parametrize("engine", ["sequential", "workers"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_option_trains_two_rounds_by_config(tmp_path, data, option, engine):
    overrides, check = OPTIONS[option]
    states = GlobalStates()
    result = run(_cfg(tmp_path, *overrides, *ENGINES[engine]), data=data, callbacks=[states])
    assert [r["round"] for r in result.history] == [1, 2]
    _finite_losses(result.history)
    check(result, states.states)


def test_defaults_leave_runs_as_they_were(tmp_path):
    """With every option at its default the model carries no semi-supervised part and no phase
    logger is built, so records keep their keys; the figures themselves were compared against the
    parent commit (model.pt bit for bit, see the commit message)."""
    from fedaux.callbacks.phase import PhaseLogger

    from fedaux.model import build_model
    from fedaux.train import default_callbacks

    cfg = _cfg(tmp_path)
    assert cfg.federated.pretrain_rounds == 0 and cfg.model.consistency.weight == 0
    model = build_model(cfg.model, {"traffic_class": 5, "bandwidth": 5, "duration": 4}, 60, 3, features=FEATURES)
    assert model.consistency is None and model.contrastive == {} and not model.pretraining
    assert not any(isinstance(c, PhaseLogger) for c in default_callbacks(cfg, tmp_path))


class CrashInRound(RoundCallback):
    """Raises as round ``rnd`` starts: the run dies with the previous round's checkpoint."""

    def __init__(self, rnd: int) -> None:
        self.rnd = rnd

    def on_round_start(self, orchestrator, rnd, clients) -> None:
        if rnd == self.rnd:
            raise RuntimeError(f"crash in round {rnd}")


def test_a_run_resumed_mid_pretraining_equals_an_uninterrupted_one(tmp_path, data):
    overrides = ["federated.rounds=3", "federated.pretrain_rounds=2", "federated.workers=1"]
    whole = run(_cfg(tmp_path / "whole", *overrides), data=data)
    with pytest.raises(RuntimeError, match="crash in round 2"):
        run(_cfg(tmp_path / "split", *overrides), data=data, callbacks=[CrashInRound(2)])
    (run_dir,) = (tmp_path / "split" / "out").glob("*/")
    from fedaux.callbacks.checkpoint import load_checkpoint

    assert load_checkpoint(run_dir)["round"] == 1  # stopped inside pre-training
    resumed = run(_cfg(tmp_path / "split", *overrides), data=data, resume=run_dir)
    assert [(r["round"], r["phase"], r["phase/round"]) for r in resumed.history] == \
        [(1, "pretrain", 1), (2, "pretrain", 2), (3, "finetune", 1)]
    assert [r["val/acc/traffic_class"] for r in resumed.history] == [r["val/acc/traffic_class"] for r in whole.history]
    a, b = whole.orchestrator.global_state, resumed.orchestrator.global_state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("weighting", ["mgda", "famo"])
def test_pretraining_leaves_the_main_head_alone_under_other_weightings(weighting):
    """Gradient-based weightings step by hand, FAMO re-scores each batch: neither touches the main head."""
    from fedaux.data.datamodule import ClientDataModule
    from fedaux.data.samples import SampleSet
    from fedaux.federated.client import client_trainer, quiet_lightning
    from fedaux.labels import IGNORE_INDEX
    from fedaux.model import build_model

    cfg = load_config(REPO / "conf" / "quic.yaml", [f"model.weighting.name={weighting}", *CONSISTENCY, *CONTRASTIVE])
    torch.manual_seed(0)
    model = build_model(cfg.model, {"traffic_class": 5, "bandwidth": 5, "duration": 4}, 60, 3, features=FEATURES)
    x = make_windows(7, 64, 60)
    labels = torch.randint(0, 5, (64,))
    labels[::2] = IGNORE_INDEX
    samples = SampleSet(x, {"traffic_class": labels, "bandwidth": torch.randint(0, 5, (64,)),
                            "duration": torch.randint(0, 4, (64,))}, torch.arange(64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.pretraining = True
    with quiet_lightning():
        client_trainer(1, None).fit(model, ClientDataModule(samples, batch_size=16))
    after = model.state_dict()
    main, trunk = _split(before)
    assert all(torch.equal(v, after[k]) for k, v in main.items())
    assert all(not torch.equal(v, after[k]) for k, v in trunk.items())
    assert not torch.equal(before["heads.bandwidth.net.weight"], after["heads.bandwidth.net.weight"])
    assert not model.heads["traffic_class"].net.weight.requires_grad  # frozen for the round's fit
    model.pretraining = False  # as the client runtime does when a fit ends, however it ended
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.slow  # DP-SGD's fits (Opacus) take half a minute on 2 cores
@pytest.mark.parametrize("extra", [["privacy.mode=dpsgd"], ["federated.strategy=scaffold", "model.weighting.name=uncertainty"]],
                         ids=["dpsgd", "scaffold-uncertainty"])
def test_pretraining_composes_with_privacy_strategies_and_weightings(tmp_path, data, extra):
    states = GlobalStates()
    result = run(_cfg(tmp_path, *PRETRAIN, "federated.workers=1", *extra), data=data, callbacks=[states])
    _finite_losses(result.history)
    _check_pretraining(result, states.states)


@pytest.mark.slow  # two Flower simulations (Ray) and two in-process runs
@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_option_trains_on_flower_as_in_process(tmp_path, data, option):
    overrides, check = OPTIONS[option]
    states = GlobalStates()
    flower = run(_cfg(tmp_path / "flower", *overrides, *ENGINES["flower"]), data=data, callbacks=[states])
    _finite_losses(flower.history)
    check(flower, states.states)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the simulated base stations fit with one thread; so does the reference
    try:
        reference = run(_cfg(tmp_path / "inprocess", *overrides, "federated.workers=1"), data=data)
    finally:
        torch.set_num_threads(threads)
    for key, value in reference.orchestrator.global_state.items():
        other = flower.orchestrator.global_state[key]
        assert (value.double() - other.double()).abs().max() <= 1e-4, key
    for ours, theirs in zip(reference.history, flower.history):
        assert theirs["val/acc/traffic_class"] == pytest.approx(ours["val/acc/traffic_class"], abs=1e-6)
        assert theirs.get("phase") == ours.get("phase")


# ---------------------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("overrides, message", [
    (["federated.pretrain_rounds=-1"], r"federated.pretrain_rounds=-1 must be >= 0"),
    (["federated.pretrain_rounds=2"], r"federated.pretrain_rounds=2 leaves none of federated.rounds=2 to fine-tune"),
    (["federated.pretrain_rounds=1", "model.heads.bandwidth=null", "model.heads.duration=null"],
     r"pre-training trains the auxiliary heads alone, and model.heads has only the main task's"),
])
def test_pretraining_config_errors(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path, *overrides)


@pytest.mark.parametrize("overrides, message", [
    (["model.consistency.weight=-1"], r"model.consistency.weight=-1.0 must be >= 0"),
    (["model.consistency.threshold=0"], r"model.consistency.threshold=0.0 must be in \(0, 1\]"),
    (["model.consistency.weight=1", "model.consistency.strong=[cutout]"],
     r"model.consistency.strong\[0\]='cutout' is not valid; choose one of \['iat_jitter', 'length_noise', "
     r"'packet_drop', 'window_shift'\]"),
    (["model.consistency.weight=1", "model.consistency.weak=[{name: iat_jitter, sigma: -1}]"],
     r"model.consistency.weak\[0\] \(iat_jitter\): sigma=-1 must be >= 0"),
    (["model.consistency.weight=1", "data.features=[iat,elapsed]"],
     r"model.consistency.strong\[3\] \(length_noise\): length_noise needs the 'signed_length' feature"),
    (["model.consistency.weight=1", "privacy.mode=dpsgd"], r"privacy.mode=dpsgd cannot be used with model.consistency"),
])
def test_consistency_config_errors(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path, *overrides)


@pytest.mark.parametrize("overrides, message", [
    (["model.heads.contrastive.kind=contrastive", "model.heads.contrastive.target=bandwidth"],
     r"model.heads.contrastive.target='bandwidth': a contrastive head learns from two augmented views"),
    (["model.heads.contrastive.kind=contrastive", "model.heads.contrastive.temperature=0"],
     r"model.heads.contrastive.temperature=0.0 must be > 0"),
    (["model.heads.contrastive.kind=contrastive", "model.heads.contrastive.augment=[]"],
     r"model.heads.contrastive.augment is empty"),
    (["model.heads.contrastive.kind=contrastive", "model.heads.contrastive.loss=mse"],
     r"model.heads.contrastive.loss='mse' is not valid for a contrastive head; choose 'nt_xent'"),
    (["model.heads.contrastive.kind=contrastive", "model.heads.contrastive.augment=[{name: window_shift, p: 1}]"],
     r"model.heads.contrastive.augment\[0\].p: window_shift has no option 'p'"),
    (["model.heads.traffic_class.kind=contrastive", "model.heads.traffic_class.target=null"],
     r"model.main_task='traffic_class' is a contrastive head"),
    (["model.heads.contrastive.kind=contrastive", "privacy.mode=dpsgd"],
     r"privacy.mode=dpsgd cannot be used with the contrastive head 'contrastive'"),
    (["model.heads.contrastive.kind=classification"], r"model.heads.contrastive.target is missing"),
])
def test_contrastive_head_config_errors(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path, *overrides)
