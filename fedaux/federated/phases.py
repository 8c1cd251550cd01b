"""A run's phases: pre-training rounds on the auxiliary tasks alone, then fine-tuning.

Rezaei & Liu ("How to Achieve High Classification Accuracy with Just a Few Labels: A
Semi-supervised Approach Using Sampled Packets", arXiv 1812.09761) pre-train a 1D-CNN to predict
statistics of unlabelled flows, then fine-tune it on a few labelled flows. Federated, with
``federated.pretrain_rounds: N``: rounds ``1..N`` fit every base station with the main task's
loss off (its head gets no gradient; the auxiliary heads learn from every window, labelled or
not), and the rounds after them train every head as usual.

A round's phase is a function of its number alone, so every engine's fits (which know their
round) and the server agree on it without a message, and a run resumed from any round's
checkpoint continues in the right phase.
"""

from __future__ import annotations

from typing import Any

from fedaux.errors import ConfigError

PRETRAIN, FINETUNE = "pretrain", "finetune"


def round_phase(rnd: int, pretrain_rounds: int) -> str:
    """``"pretrain"`` for rounds ``1..pretrain_rounds``, ``"finetune"`` after them.

    Example:
        >>> [round_phase(r, 2) for r in (1, 2, 3)]
        ['pretrain', 'pretrain', 'finetune']
    """
    return PRETRAIN if rnd <= pretrain_rounds else FINETUNE


def phase_round(rnd: int, pretrain_rounds: int) -> int:
    """The round's number within its phase (1 for the first round of each).

    Example:
        >>> [phase_round(r, 2) for r in (1, 2, 3, 4)]
        [1, 2, 1, 2]
    """
    return rnd if rnd <= pretrain_rounds else rnd - pretrain_rounds


def check_config(cfg: Any) -> None:
    """``federated.pretrain_rounds``' rules (called by :func:`fedaux.config.validate`): at least one
    round left to fine-tune in, and an auxiliary head to pre-train."""
    rounds, pretrain = cfg.federated.rounds, cfg.federated.pretrain_rounds
    if pretrain < 0:
        raise ConfigError(f"federated.pretrain_rounds={pretrain} must be >= 0 (0: no pre-training)")
    if pretrain == 0:
        return
    if pretrain >= rounds:
        raise ConfigError(f"federated.pretrain_rounds={pretrain} leaves none of federated.rounds={rounds} to fine-tune "
                          f"the main task in; give at most {rounds - 1} or more rounds")
    auxiliary = [name for name in cfg.model.heads if name != cfg.model.main_task]
    if not auxiliary:
        raise ConfigError(f"federated.pretrain_rounds={pretrain}: pre-training trains the auxiliary heads alone, and "
                          f"model.heads has only the main task's ({cfg.model.main_task!r}); add an auxiliary head")
