"""UCR/UEA classification datasets that ship inside the ``sktime`` package, and the missingness protocol.

No download: the ``.ts`` files are read from ``sktime/datasets/data/<Name>/`` of the installed
package (located without importing sktime, which is slow to import), or from ``data_dir=``.
``sktime`` is an optional dependency (``pip install sciml-solvers[data]``); without it
``load_ucr`` raises an ``ImportError`` that says so.

Protocol of Oh, Lim, Kim (ICLR 2024, section 4.3 and appendix), as for Neural CDEs (Kidger et al. 2020):

* train and test files are concatenated; series of unequal length are linearly resampled to the
  longest length;
* stratified train / validation / test split (default 70 / 15 / 15) with a seed;
* missingness: for each sample and each channel independently, ``int(L * rate)`` distinct time points
  chosen uniformly at random are set to NaN (``drop_points``), ``rate`` in {0, 0.3, 0.5, 0.7};
* channels are standardised with the mean and standard deviation of the observed training values.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

#: Datasets known to ship with sktime 1.2 (name -> folder).
UCR_DATASETS = ("ArrowHead", "GunPoint", "BasicMotions", "ItalyPowerDemand", "OSULeaf", "JapaneseVowels",
                "ACSF1", "PLAID")
MISSING_RATES = (0.0, 0.3, 0.5, 0.7)


def sktime_data_dir() -> Path:
    """The folder of datasets inside the installed sktime package (``ImportError`` without sktime)."""
    spec = _sktime_spec()
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the UCR/UEA loaders read the .ts files shipped inside sktime; install "
                          "the optional extra: pip install sktime")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def _sktime_spec():
    try:
        return importlib.util.find_spec("sktime")
    except (ValueError, ImportError):      # e.g. sys.modules["sktime"] = None (import blocked)
        return None


def sktime_available() -> bool:
    """Whether the optional sktime package (which holds the data files) is installed."""
    return _sktime_spec() is not None


def read_ts(path: str | Path) -> tuple[list[np.ndarray], list[str]]:
    """Parse a ``.ts`` file (sktime/UEA format): a list of ``(channels, length_i)`` arrays and labels.

    Missing values written as ``?`` become NaN.
    """
    series: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    with open(path, encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                if line.lower().startswith("@data"):
                    in_data = True
                continue
            *dims, label = line.split(":")
            if not dims:
                raise ValueError(f"{path}: data line without values: {line[:60]!r}")
            chans = [np.array([np.nan if v.strip() in ("?", "NaN", "nan") else float(v)
                               for v in d.split(",")], dtype=np.float64) for d in dims]
            n = max(len(c) for c in chans)
            arr = np.full((len(chans), n), np.nan)
            for i, c in enumerate(chans):
                arr[i, :len(c)] = c
            series.append(arr)
            labels.append(label.strip())
    if not in_data or not series:
        raise ValueError(f"{path}: no @data section / no series found")
    return series, labels


def _resample(arr: np.ndarray, length: int) -> np.ndarray:
    """Linear resampling of ``(C, n)`` to ``(C, length)`` (trailing NaN padding dropped first)."""
    C, n = arr.shape
    valid = ~np.isnan(arr).all(axis=0)
    last = int(np.nonzero(valid)[0].max()) + 1 if valid.any() else n
    arr = arr[:, :last]
    if last == length:
        return arr
    src = np.linspace(0.0, 1.0, last)
    dst = np.linspace(0.0, 1.0, length)
    return np.stack([np.interp(dst, src, c) for c in arr])


@dataclass
class TimeSeriesDataset:
    """A classification dataset: ``x (N, L, C)`` float, ``y (N,)`` int64 class index, ``times (L,)``."""

    name: str
    x: Tensor
    y: Tensor
    times: Tensor
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.x.shape[-1]

    def __len__(self) -> int:
        return self.x.shape[0]

    def subset(self, idx: Tensor | np.ndarray) -> TimeSeriesDataset:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return TimeSeriesDataset(self.name, self.x[idx], self.y[idx], self.times, self.classes)


def load_ucr(name: str, data_dir: str | Path | None = None,
             dtype: torch.dtype = torch.float32) -> TimeSeriesDataset:
    """Load ``name`` (train + test concatenated) from the ``.ts`` files shipped with sktime.

    Times are ``t_k = k / (L - 1)`` on ``[0, 1]``. Raises ``ImportError`` without sktime (and no
    ``data_dir``), ``FileNotFoundError`` for an unknown dataset.
    """
    root = Path(data_dir) if data_dir is not None else sktime_data_dir()
    folder = root / name
    files = [folder / f"{name}_TRAIN.ts", folder / f"{name}_TEST.ts"]
    if not all(f.exists() for f in files):
        have = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []
        raise FileNotFoundError(f"no {name}_TRAIN.ts / {name}_TEST.ts under {folder}; available: {have}")
    series: list[np.ndarray] = []
    labels: list[str] = []
    for f in files:
        s, lab = read_ts(f)
        series += s
        labels += lab
    length = max(a.shape[1] for a in series)
    chans = {a.shape[0] for a in series}
    if len(chans) != 1:
        raise ValueError(f"{name}: series have different channel counts {sorted(chans)}")
    x = np.stack([_resample(a, length) for a in series]).transpose(0, 2, 1)      # (N, L, C)
    classes = tuple(sorted(set(labels), key=lambda v: (float(v), v) if _is_number(v) else (np.inf, v)))
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[v] for v in labels], dtype=np.int64)
    times = torch.linspace(0.0, 1.0, length, dtype=torch.float64)
    return TimeSeriesDataset(name, torch.as_tensor(x, dtype=dtype), torch.as_tensor(y), times, classes)


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def stratified_split(y: Tensor | np.ndarray, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a stratified train / validation / test split.

    Within each class the samples are shuffled with ``numpy.random.default_rng(seed)`` and cut at the
    cumulative fractions (rounded), so each class appears in every part in about its proportion.
    """
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or (f < 0).any() or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for c in np.unique(y):
        idx = np.nonzero(y == c)[0]
        idx = idx[rng.permutation(len(idx))]
        n1 = int(round(f[0] * len(idx)))
        n2 = int(round((f[0] + f[1]) * len(idx)))
        for k, chunk in enumerate((idx[:n1], idx[n1:n2], idx[n2:])):
            parts[k] += chunk.tolist()
    return tuple(np.sort(np.array(p, dtype=np.int64)) for p in parts)  # type: ignore[return-value]


def drop_points(x: Tensor, rate: float, seed: int = 0) -> Tensor:
    """The missingness protocol: per sample and channel, set ``int(L * rate)`` random time points to NaN.

    Points are distinct and drawn independently for every (sample, channel) pair with a
    ``torch.Generator`` seeded by ``seed``; the input is not modified.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"missing rate must be in [0, 1), got {rate}")
    if x.dim() != 3:
        raise ValueError(f"x must have shape (N, L, C), got {tuple(x.shape)}")
    N, L, C = x.shape
    k = int(L * rate)
    out = x.clone()
    if k == 0:
        return out
    gen = torch.Generator().manual_seed(seed)
    # A random permutation per (sample, channel): the first k entries are dropped.
    order = torch.rand(N, C, L, generator=gen).argsort(dim=-1)[..., :k]          # (N, C, k)
    mask = torch.zeros(N, C, L, dtype=torch.bool)
    mask.scatter_(-1, order, True)
    out[mask.transpose(1, 2).to(x.device)] = float("nan")
    return out


def standardize(train: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """Standardise channels with the NaN-aware mean / std of ``train``; returns all inputs transformed."""
    mean = torch.nanmean(train, dim=(0, 1), keepdim=True)
    var = torch.nanmean((train - mean) ** 2, dim=(0, 1), keepdim=True)
    std = var.sqrt().clamp_min(1e-8)
    return tuple((a - mean) / std for a in (train, *others))


@dataclass
class Splits:
    """Train / validation / test parts after missingness and standardisation."""

    train: TimeSeriesDataset
    val: TimeSeriesDataset
    test: TimeSeriesDataset


def prepare(data: TimeSeriesDataset, missing_rate: float = 0.0, seed: int = 0,
            fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> Splits:
    """Apply the protocol: drop points (seed ``seed``), stratified split (seed ``seed``), standardise."""
    x = drop_points(data.x, missing_rate, seed=seed)
    i_tr, i_va, i_te = stratified_split(data.y, fractions, seed=seed)
    xtr, xva, xte = standardize(x[i_tr], x[i_va], x[i_te])
    mk = lambda xx, ii: TimeSeriesDataset(data.name, xx, data.y[ii], data.times, data.classes)  # noqa: E731
    return Splits(mk(xtr, i_tr), mk(xva, i_va), mk(xte, i_te))
