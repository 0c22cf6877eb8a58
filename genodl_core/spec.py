"""The typed trial specification: load, validate, resolve, and the stable trial id.

A trial spec is written in TOML or JSON::

    seed = 1
    [model]
    name = "nt3"               # any key besides `name` is a model parameter
    dense = [200, 20]
    [data]
    source = "synthetic_nt3"   # any key besides `source` (and `validation`) is a data parameter
    n_train = 200
    validation = 0.2           # the validation rule (ValidationSpec); "auto" by default
    [[noise]]                  # an ordered LIST of steps, applied in turn
    kind = "label_flip"
    fraction = 0.2
    [train]
    epochs = 5

Loading validates everything that can be known before data is read (names, types, ranges, and
feature columns when the data source declares its width). The *resolved* spec has every default
filled in; its canonical JSON hash is the trial id, so two specs that mean the same trial share
an id whatever their key order or omitted defaults.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from genodl_core import toml
from genodl_core.errors import SpecError
from genodl_core.registry import DATASETS, MODELS, NOISES, Entry
from genodl_core.typed import build, check_range, convert, to_plain

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "tf32", "bf16"]


@dataclass(frozen=True)
class Component:
    """A registered component chosen by name, with its validated parameter dataclass."""

    name: str
    params: Any

    def to_dict(self, key: str) -> dict[str, Any]:
        return {key: self.name, **to_plain(self.params)}


#: Largest ``train.learning_rate`` accepted (any larger rate diverges at once).
MAX_LEARNING_RATE = 100.0


@dataclass(frozen=True)
class TrainSpec:
    """Optimisation settings shared by the neural models (defaults: NT3 paper, Table I)."""

    epochs: int = 100
    batch_size: int = 16
    optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: float = 0.002
    momentum: float = 0.0
    weight_decay: float = 0.0
    #: ReduceLROnPlateau on val_loss, as CANDLE's NT3 callbacks (factor, patience, min_delta).
    reduce_lr_on_plateau: bool = False
    plateau_factor: float = 0.1
    plateau_patience: int = 10
    plateau_min_delta: float = 1e-4
    min_learning_rate: float = 0.0
    #: Wall-clock budget of the training loop; the trial fails with TrialTimeout past it.
    timeout_s: float | None = 3600.0
    #: Noisy-label detection (docs/detection.md): "auto" collects per-sample signals when a
    #: noise step records a flip mask, "on" always (classifiers), "off" never.
    detect: Literal["auto", "on", "off"] = "auto"
    #: Epochs at the end of training whose per-sample losses are averaged (loss detector).
    detect_last_epochs: int = 5
    #: K >= 2: confident learning on out-of-sample probabilities of K fold models trained
    #: inside the trial (needs cleanlab); 0: off.
    detect_folds: int = 0

    def validate(self, where: str) -> None:
        check_range(where, "epochs", self.epochs, 1)
        check_range(where, "batch_size", self.batch_size, 1)
        # Rates far above 1 only make the weights overflow; 100 leaves room for any schedule.
        check_range(where, "learning_rate", self.learning_rate, 0, MAX_LEARNING_RATE,
                    lo_open=True)
        check_range(where, "momentum", self.momentum, 0, 1, hi_open=True)
        check_range(where, "weight_decay", self.weight_decay, 0)
        check_range(where, "plateau_factor", self.plateau_factor, 0, 1, lo_open=True, hi_open=True)
        check_range(where, "plateau_patience", self.plateau_patience, 0)
        check_range(where, "plateau_min_delta", self.plateau_min_delta, 0)
        check_range(where, "min_learning_rate", self.min_learning_rate, 0, MAX_LEARNING_RATE)
        check_range(where, "timeout_s", self.timeout_s, 0, lo_open=True)
        check_range(where, "detect_last_epochs", self.detect_last_epochs, 1)
        if self.detect_folds == 1 or self.detect_folds < 0:
            raise SpecError(f"{where}.detect_folds" if where else "detect_folds",
                            self.detect_folds, "0 (off) or a number of folds >= 2",
                            reason="one fold leaves no held-out model")


#: The names a ``data.validation`` rule may take besides a fraction.
VALIDATION_RULES = ("auto", "test")
#: The share of the training split ``"auto"`` carves when a source has no separate test split.
AUTO_VALIDATION_FRACTION = 0.2


@dataclass(frozen=True)
class ValidationSpec:
    """Which rows a trial validates on: the ``validation`` and ``validation_seed`` keys of
    ``[data]``, the same for every data source.

    Controllers, schedules and epoch selection tune on the validation split, so the numbers
    reported on it are not on untouched data. ``rule`` is

    - ``"auto"`` (default): carve :data:`AUTO_VALIDATION_FRACTION` of the training split when
      the source has no test split separate from its validation split (the NT3 sources, whose
      validation split is their test file, which then becomes the test split); otherwise keep
      the source's own validation split (the D-GEX sources);
    - ``"test"``: CANDLE's arrangement, validating on the test file with no separate test
      split (to reproduce the paper's numbers);
    - a fraction in (0, 0.5]: carve that share of the training split (stratified by class for
      classification) as the validation split; the source's held-out split becomes the test.

    ``seed`` seeds the carve. It is not the trial seed, so every trial of a sweep (every seed
    and noise level) sees the same split. The carve itself is :mod:`genodl_core.data.validation`.
    """

    rule: Literal["auto", "test"] | float = "auto"
    seed: int = 0

    @property
    def carves(self) -> bool:
        """Whether the rule may take rows from the training split (the seed matters)."""
        return self.rule != "test"

    def to_dict(self) -> dict[str, Any]:
        """The keys this rule adds to the resolved ``[data]`` table (part of the trial id).

        ``"test"`` never carves, so its seed is left out: two such specs are the same trial.
        """
        return ({"validation": self.rule, "validation_seed": self.seed} if self.carves
                else {"validation": self.rule})


def validation_from_table(table: dict[str, Any], where: str = "data") -> ValidationSpec:
    """Pop ``validation`` and ``validation_seed`` from a ``[data]`` table (modified in place,
    so the source's own parameters are built from what is left) and check them.

    Raises
    ------
    SpecError
        Naming the key, the bad value and what is allowed.
    """
    rule = table.pop("validation", "auto")
    seed = table.pop("validation_seed", 0)
    allowed = '"auto", "test" or a fraction 0 < f <= 0.5 of the training split'
    if isinstance(rule, str):
        if rule not in VALIDATION_RULES:
            raise SpecError(f"{where}.validation", rule, allowed, reason="unknown rule")
    elif isinstance(rule, (int, float)) and not isinstance(rule, bool):
        rule = float(rule)
        if not 0.0 < rule <= 0.5:  # also rejects NaN
            raise SpecError(f"{where}.validation", rule, allowed, reason="out of range")
    else:
        raise SpecError(f"{where}.validation", rule, allowed, reason="expected a name or number")
    seed = convert(int, seed, f"{where}.validation_seed")
    check_range(where, "validation_seed", seed, 0, 2**63 - 1)
    return ValidationSpec(rule=rule, seed=seed if rule != "test" else 0)


@dataclass(frozen=True)
class TrialSpec:
    """Everything that defines one trial; the resolved form is hashed into the trial id."""

    model: Component
    data: Component
    noise: tuple[Component, ...] = ()
    train: TrainSpec = field(default_factory=TrainSpec)
    seed: int = 0
    device: Device = "auto"
    precision: Precision = "auto"
    #: Written into the ``data`` table by :meth:`to_dict`: part of the trial id.
    validation: ValidationSpec = field(default_factory=ValidationSpec)

    @property
    def trial_id(self) -> str:
        """16 hex digits of the SHA-256 of the canonical resolved spec."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def task(self) -> str:
        return MODELS.get(self.model.name).meta["task"]

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain data (round-trips through :func:`spec_from_dict`)."""
        return {
            "seed": self.seed,
            "device": self.device,
            "precision": self.precision,
            "model": self.model.to_dict("name"),
            "data": {**self.data.to_dict("source"), **self.validation.to_dict()},
            "noise": [step.to_dict("kind") for step in self.noise],
            "train": _train_dict(self.train),
        }

    def replace(self, **changes: Any) -> "TrialSpec":
        """A copy with top-level fields replaced (the copy is re-validated)."""
        return spec_from_dict({**self.to_dict(), **changes})

    def check_data(self, n_features: int | None, where_suffix: str = "") -> None:
        """Check noise parameters that depend on the data width (e.g. ``feature_col``)."""
        if n_features is None:
            return
        for i, step in enumerate(self.noise):
            check = getattr(step.params, "check_data", None)
            if callable(check):
                check(f"noise[{i}]", n_features)


#: Train settings that only add what a record reports: left out of the resolved spec (and so
#: of the trial id) while at their defaults, so adding them kept every earlier trial's id.
_REPORT_ONLY_DEFAULTS = {"detect": "auto", "detect_last_epochs": 5, "detect_folds": 0}


def _train_dict(train: TrainSpec) -> dict[str, Any]:
    plain = to_plain(train)
    for key, default in _REPORT_ONLY_DEFAULTS.items():
        if plain.get(key) == default:
            plain.pop(key)
    return plain


def _component(registry, table: Any, key: str, where: str) -> Component:
    if not isinstance(table, Mapping):
        raise SpecError(where, table, f"a table with '{key}' and parameters", reason="not a table")
    params = dict(table)
    if key not in params:
        raise SpecError(f"{where}.{key}", None, registry.names(), reason="missing required key")
    name = params.pop(key)
    if not isinstance(name, str):
        raise SpecError(f"{where}.{key}", name, registry.names(), reason="expected a name")
    entry: Entry = registry.get(name, f"{where}.{key}")
    return Component(name, build(entry.params, params, where))


def spec_from_dict(data: Mapping[str, Any]) -> TrialSpec:
    """Validate a plain mapping (parsed TOML/JSON) and return the resolved :class:`TrialSpec`.

    Raises
    ------
    SpecError
        On the first invalid field, naming it, the bad value and what is allowed.
    """
    if not isinstance(data, Mapping):
        raise SpecError("spec", data, "a table", reason="not a table")
    allowed = {"seed", "device", "precision", "model", "data", "noise", "train"}
    for key in data:
        if key not in allowed:
            raise SpecError(key, data[key], sorted(allowed), reason="unknown key")
    if "model" not in data:
        raise SpecError("model", None, "a [model] table naming one of " + repr(MODELS.names()),
                        reason="missing required key")
    if "data" not in data:
        raise SpecError("data", None, "a [data] table naming one of " + repr(DATASETS.names()),
                        reason="missing required key")
    model = _component(MODELS, data["model"], "name", "model")
    data_table = dict(data["data"]) if isinstance(data["data"], Mapping) else data["data"]
    # The validation rule applies to every source; it is no parameter of the source itself.
    validation = (validation_from_table(data_table) if isinstance(data_table, dict)
                  else ValidationSpec())
    dataset = _component(DATASETS, data_table, "source", "data")
    steps = data.get("noise", [])
    if isinstance(steps, Mapping):
        steps = [steps]
    if not isinstance(steps, (list, tuple)):
        raise SpecError("noise", steps, "a list of [[noise]] tables", reason="not a list")
    noise = tuple(_component(NOISES, s, "kind", f"noise[{i}]") for i, s in enumerate(steps))
    spec = TrialSpec(
        model=model,
        data=dataset,
        noise=noise,
        train=build(TrainSpec, data.get("train"), "train"),
        seed=convert(int, data.get("seed", 0), "seed"),
        device=convert(Device, data.get("device", "auto"), "device"),
        precision=convert(Precision, data.get("precision", "auto"), "precision"),
        validation=validation,
    )
    check_range("", "seed", spec.seed, 0, 2**63 - 1)
    _check_compatibility(spec)
    # Sources declare their width as a field or a method (None when only the files know it).
    n_features = getattr(dataset.params, "n_features", None)
    spec.check_data(n_features() if callable(n_features) else n_features)
    return spec


def _check_compatibility(spec: TrialSpec) -> None:
    model_task = MODELS.get(spec.model.name).meta["task"]
    data_task = DATASETS.get(spec.data.name).meta["task"]
    if model_task != data_task:
        fitting = [e.name for e in MODELS if e.meta["task"] == data_task]
        raise SpecError("model.name", spec.model.name, fitting,
                        reason=f"a {model_task} model cannot train on {data_task} data "
                               f"from data.source={spec.data.name!r}")
    for i, step in enumerate(spec.noise):
        tasks = NOISES.get(step.name).meta.get("tasks", ("classification", "regression"))
        if data_task not in tasks:
            fitting = [e.name for e in NOISES if data_task in e.meta.get("tasks", ())]
            raise SpecError(f"noise[{i}].kind", step.name, fitting,
                            reason=f"does not apply to {data_task} data")


def load_spec(path: str | Path) -> TrialSpec:
    """Load and validate a trial spec from a ``.toml`` or ``.json`` file."""
    return spec_from_dict(read_table(path))


def read_table(path: str | Path) -> dict[str, Any]:
    """Parse a TOML or JSON file into a dict, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("spec file", str(path), "an existing .toml or .json file",
                        reason="no such file")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return toml.loads(text)
    except (json.JSONDecodeError, toml.TOMLDecodeError) as err:
        raise SpecError("spec file", str(path), "valid TOML (.toml) or JSON (.json)",
                        reason=f"cannot parse: {err}") from None


def derive_seed(seed: int, purpose: str) -> int:
    """An independent 63-bit seed for one purpose (noise, init, shuffling) of a trial.

    Separate streams mean that adding a noise step does not change the weight initialisation,
    so that trials differing only in noise are paired, as the noise studies intend.
    """
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


__all__ = ["Component", "TrainSpec", "TrialSpec", "ValidationSpec", "VALIDATION_RULES",
           "AUTO_VALIDATION_FRACTION", "validation_from_table", "spec_from_dict", "load_spec",
           "read_table", "derive_seed"]
