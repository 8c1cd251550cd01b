"""LightningDataModules over a :class:`~fedaux.data.samples.SampleSet`.

Batches are dicts: ``{"x": (B, C, packets) float32, <target>: (B,) ...}`` with ``C`` features per
packet (``data.features``); held-out batches also carry ``"flow_index": (B,) int64``, each
window's flow. The dataset hands out
whole batches through ``__getitems__`` (one tensor index per batch, not one call per sample), which
keeps data loading negligible next to the model's arithmetic.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from fedaux.data.samples import SampleSet
from fedaux.labels import FLOW_KEY


class SampleDataset(Dataset):
    """Map-style dataset returning batched dicts for a list of indices.

    Args:
        with_flows: add each window's flow index under ``flow_index`` (evaluation batches, for
            flow-level metrics; training needs none).
    """

    def __init__(self, samples: SampleSet, with_flows: bool = False) -> None:
        self.samples, self.with_flows = samples, with_flows

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch = {"x": self.samples.x[idx]}
        if self.with_flows:
            batch[FLOW_KEY] = self.samples.flow_index[idx]
        batch.update({name: values[idx] for name, values in self.samples.targets.items()})
        return batch


def _already_batched(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch


def batch_loader(samples: SampleSet, batch_size: int, shuffle: bool, seed: int = 0,
                 with_flows: bool = False) -> DataLoader:
    """A DataLoader of dict batches; shuffling is seeded so runs repeat exactly."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        SampleDataset(samples, with_flows),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        # torch types collate_fn's input as a list of samples; with __getitems__ it gets the dataset's batch
        collate_fn=_already_batched,  # type: ignore[arg-type]
        # A training batch of one sample breaks BatchNorm; when the split would leave one, that
        # sample (a different one each epoch, as the order is reshuffled) waits for the next epoch.
        drop_last=shuffle and len(samples) % batch_size == 1 and len(samples) > 1,
    )


class ClientDataModule(L.LightningDataModule):
    """One base station's private training samples.

    ``seed`` fixes the shuffling order; the orchestrator changes it every round so a client does
    not see its batches in the same order each time. ``client`` is the base station's index (None
    where unknown): Lightning callbacks read it as ``trainer.datamodule.client``, in whichever
    process the fit runs; ``rnd`` is the round (``trainer.datamodule.rnd``).
    """

    def __init__(self, train: SampleSet, batch_size: int = 32, seed: int = 0, client: int | None = None,
                 rnd: int | None = None) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"federated.batch_size={batch_size} must be >= 1")
        self.train_samples, self.batch_size, self.seed, self.client = train, batch_size, seed, client
        self.rnd = rnd

    def train_dataloader(self) -> DataLoader:
        return batch_loader(self.train_samples, self.batch_size, shuffle=True, seed=self.seed)


class HeldOutDataModule(L.LightningDataModule):
    """The held-out test flows, used for validation and testing of the global model."""

    def __init__(self, test: SampleSet, batch_size: int = 512) -> None:
        super().__init__()
        self.test_samples, self.batch_size = test, batch_size

    def val_dataloader(self) -> DataLoader:
        return batch_loader(self.test_samples, self.batch_size, shuffle=False, with_flows=True)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
