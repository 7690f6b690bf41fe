"""Load `params.yaml` into frozen, validated settings: one dataclass per section.

`load_params(path)` returns `Params` or raises `ParamsError` naming the file, the key, the value and what is
allowed; `load_gate_rules(text, source)` reads only `gate:`. `read_yaml` and `write_yaml` are the project's only
YAML reader and writer.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import io
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from stages.common.errors import UserError

# What numpy's and torch's seeding (`set_seed`) accept: an unsigned 32-bit integer.
MAX_SEED = 2**32 - 1


class ParamsError(UserError):
    """A params file that cannot be used as it is; the message says what to change."""


def _rule(
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Field metadata: the bounds or choices a value must respect."""
    return {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}


@dataclass(frozen=True)
class DataParams:
    """Section `data:` — where the reviews come from and how many labels they have."""

    dataset: str
    revision: str | None
    num_labels: int = field(metadata=_rule(ge=2))
    test_size: float = field(metadata=_rule(gt=0, lt=1))
    seed: int = field(metadata=_rule(ge=0, le=MAX_SEED))
    synthetic_train_size: int = field(metadata=_rule(ge=1))
    synthetic_test_size: int = field(metadata=_rule(ge=1))
    synthetic_label_noise: float = field(metadata=_rule(ge=0, le=1))
    synthetic_length_scale: float = field(metadata=_rule(gt=0))


@dataclass(frozen=True)
class ModelParams:
    """Section `model:` — the pretrained checkpoint to fine-tune."""

    name: str
    revision: str | None
    trust_remote_code: bool


@dataclass(frozen=True)
class TokenizeParams:
    """Section `tokenize:` — how texts become token ids."""

    max_length: int = field(metadata=_rule(ge=8))
    padding: str = field(metadata=_rule(choices=("dynamic", "max_length")))
    batch_size: int = field(metadata=_rule(ge=1))
    num_proc: int | None = field(metadata=_rule(ge=1))


@dataclass(frozen=True)
class SubsetParams:
    """Section `subset:` — the seeded train and eval subsets, as in the tutorial."""

    train_size: int = field(metadata=_rule(ge=1))
    eval_size: int = field(metadata=_rule(ge=1))
    seed: int = field(metadata=_rule(ge=0, le=MAX_SEED))


@dataclass(frozen=True)
class TrainParams:
    """Section `train:` — the `Trainer` run."""

    epochs: float = field(metadata=_rule(gt=0))
    learning_rate: float = field(metadata=_rule(ge=0))
    batch_size: int = field(metadata=_rule(ge=1))
    eval_batch_size: int = field(metadata=_rule(ge=1))
    weight_decay: float = field(metadata=_rule(ge=0))
    warmup_ratio: float = field(metadata=_rule(ge=0, lt=1))
    attention_dropout: float | None = field(metadata=_rule(ge=0, lt=1))
    seed: int = field(metadata=_rule(ge=0, le=MAX_SEED))
    max_steps: int | None = field(metadata=_rule(ge=1))
    logging_steps: int = field(metadata=_rule(ge=1))
    group_by_length: bool
    save_steps: int | None = field(metadata=_rule(ge=1))
    precision: str = field(metadata=_rule(choices=("auto", "fp32", "bf16", "fp16")))
    tf32: str = field(metadata=_rule(choices=("auto", "on", "off")))
    optimizer: str = field(metadata=_rule(choices=("auto", "adamw_torch", "adamw_torch_fused")))
    dataloader_workers: int | None = field(metadata=_rule(ge=0))
    torch_compile: bool
    attention_dropout_kernel: str = field(metadata=_rule(choices=("auto", "fast", "torch")))
    nproc_per_node: int = field(metadata=_rule(ge=1))
    nnodes: int = field(metadata=_rule(ge=1))
    master_addr: str
    master_port: int = field(metadata=_rule(ge=1, le=65535))


@dataclass(frozen=True)
class EvaluateParams:
    """Section `evaluate:` — batch prediction on the eval subset."""

    batch_size: int = field(metadata=_rule(ge=1))
    profile: str


@dataclass(frozen=True)
class MetricRule:
    """How the gate judges one metric: which way is better, and how much worse is tolerated."""

    direction: str = field(metadata=_rule(choices=("higher", "lower")))
    tolerance: float = field(metadata=_rule(ge=0))


@dataclass(frozen=True)
class GateParams:
    """Section `gate:` — read by `python -m stages.gate`, not by a pipeline stage."""

    confidence: float = field(metadata=_rule(gt=0.5, lt=1))
    bootstrap_samples: int = field(metadata=_rule(ge=100))
    seed: int = field(metadata=_rule(ge=0, le=MAX_SEED))
    metrics: dict[str, MetricRule]


@dataclass(frozen=True)
class Params:
    """The whole `params.yaml`, every section validated."""

    data: DataParams
    model: ModelParams
    tokenize: TokenizeParams
    subset: SubsetParams
    train: TrainParams
    evaluate: EvaluateParams
    gate: GateParams


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested params mapping as `{"section.key": value}`, the dotted keys `dvc exp run -S` takes."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return flat


def _yaml() -> YAML:
    # DVC reads params with ruamel.yaml's safe loader: YAML 1.2, where `3e-05` is a number and `off`
    # a string (PyYAML's YAML 1.1 reads them as a string and a boolean). Duplicate keys are refused.
    yaml = YAML(typ="safe")  # as `dvc.utils.serialize.parse_yaml`
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False
    return yaml


def read_yaml(text: str, source: str | Path) -> Any:
    """Parse YAML `text` as DVC reads `params.yaml`; a problem is one `ParamsError` line naming `source`."""
    try:
        return _yaml().load(text)
    except DuplicateKeyError as err:
        key = re.search(r'duplicate key "(.*?)"', err.problem or "")
        line = f" (again at line {err.problem_mark.line + 1})" if err.problem_mark else ""
        raise ParamsError(
            f"{source}: key {key.group(1) if key else '?'!r} appears twice in one mapping{line}; "
            "a key may appear only once"
        ) from None
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f" ({err.context})" if err.context else ""
        raise ParamsError(f"{source}{where}: not valid YAML: {err.problem}{context}") from None
    except YAMLError as err:
        raise ParamsError(f"{source}: not valid YAML: {str(err).strip().splitlines()[0]}") from None


def write_yaml(path: Path, data: Any) -> None:
    """Write `data` to `path` as YAML that `read_yaml` and DVC read back as it was, keys in order."""
    stream = io.StringIO()
    _yaml().dump(data, stream)
    path.write_text(stream.getvalue())


def with_overrides(tree: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A copy of the params mapping `tree` with each section of `overrides` updated key by key."""
    result = copy.deepcopy(tree)
    for section, values in overrides.items():
        result.setdefault(section, {}).update(copy.deepcopy(values))
    return result


def override_params_file(path: Path, overrides: dict[str, dict[str, Any]]) -> None:
    """Apply `overrides` to the params file at `path` in place, keeping every other key, as an edit would."""
    write_yaml(path, with_overrides(read_yaml(path.read_text(), path) or {}, overrides))


def load_params(path: Path = Path("params.yaml")) -> Params:
    """Read and validate `path`; raise `ParamsError` naming the first problem found."""
    # Every stage reads its settings here, so a misspelled key or a bad value fails before any work starts.
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    raw = read_yaml(text, path)
    if raw is None:
        sections = ", ".join(f.name for f in dataclasses.fields(Params))
        raise ParamsError(f"{path}: is empty; expected the sections {sections}")
    return _build(Params, raw, path, prefix="")


def load_gate_rules(text: str, source: str) -> GateParams:
    """The `gate:` section of a params file's `text`, validated: the rules a change is judged by.

    Only that section is read, so the rules of a revision whose other sections this code no longer
    takes (a key added or renamed since) still load.
    """
    raw = read_yaml(text, source)
    if not isinstance(raw, dict) or "gate" not in raw:
        raise ParamsError(f"{source}: no 'gate' section; expected the gate rules (gate.confidence, gate.metrics, ...)")
    return _build(GateParams, raw["gate"], Path(source), prefix="gate.")


def _build(cls: type, raw: Any, path: Path, prefix: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: {where} must be a mapping of keys to values, got {_short(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            allowed = ", ".join(fields)
            raise ParamsError(f"{path}: unknown key '{prefix}{key}'{hint}; {where} takes: {allowed}")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name not in raw:
            raise ParamsError(f"{path}: missing key '{key}' (set it, or null where it may be off)")
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name], path, prefix=f"{key}.")
        elif typing.get_origin(hint) is dict:
            values[name] = _build_mapping(typing.get_args(hint)[1], raw[name], path, key)
        else:
            values[name] = _check_value(raw[name], hint, f.metadata, key, path)
    return cls(**values)


def _build_mapping(cls: type, raw: Any, path: Path, key: str) -> dict[str, Any]:
    """A mapping of names to sections of type `cls` (e.g. `gate.metrics.<name>`)."""
    if not isinstance(raw, dict) or not raw:
        raise ParamsError(f"{path}: {key} must be a non-empty mapping of names to settings, got {_short(raw)}")
    return {str(name): _build(cls, value, path, prefix=f"{key}.{name}.") for name, value in raw.items()}


def _check_value(value: Any, hint: Any, rule: typing.Mapping[str, Any], key: str, path: Path) -> Any:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ParamsError(f"{path}: {key} is null; expected {_describe(allowed, rule)}")
    base = next(t for t in allowed if t is not type(None))
    # bool is an int in Python: `epochs: true` must not pass as 1. An int is a fine float.
    if base is bool:
        ok = isinstance(value, bool)
    elif base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, base) and not isinstance(value, bool)
    if not ok:
        raise ParamsError(f"{path}: {key} = {_short(value)} has the wrong type; expected {_describe(allowed, rule)}")
    if base is float:
        value = float(value)
        if not math.isfinite(value):
            raise ParamsError(f"{path}: {key} = {value!r} is not a finite number; expected {_describe(allowed, rule)}")
    if not _in_range(value, rule):
        raise ParamsError(f"{path}: {key} = {value!r} is out of range; expected {_describe(allowed, rule)}")
    return value


def _short(value: Any) -> str:
    """`repr(value)`, cut to a length that keeps an error on one readable line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _in_range(value: Any, rule: typing.Mapping[str, Any]) -> bool:
    if rule.get("choices") is not None:
        return value in rule["choices"]
    checks = {
        "ge": lambda bound: value >= bound,
        "gt": lambda bound: value > bound,
        "le": lambda bound: value <= bound,
        "lt": lambda bound: value < bound,
    }
    return all(check(rule[name]) for name, check in checks.items() if rule.get(name) is not None)


def _describe(allowed: tuple[Any, ...], rule: typing.Mapping[str, Any]) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    base = next(t for t in allowed if t is not type(None))
    if rule.get("choices") is not None:
        text = "one of " + ", ".join(repr(c) for c in rule["choices"])
    else:
        text = names[base]
        symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
        bounds = [f"{symbols[k]} {rule[k]}" for k in symbols if rule.get(k) is not None]
        if bounds:
            text += " " + " and ".join(bounds)
    if type(None) in allowed:
        text += ", or null"
    return text
