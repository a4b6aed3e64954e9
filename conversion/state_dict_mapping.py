"""The key tables every converter is written in, and the checks every conversion ends with.

A converter is four parts:
1. a declarative key table: source key template -> target key template(s), plus a pair of pure tensor
   functions (forward, inverse); the inverse table of a layout is derived from the same rows. Where the
   names already match (transformers' CLIP and Fuyu layouts) there is no table: the strict load alone
   refuses every name the model lacks;
2. small pure tensor functions (`keep` here; the OpenAI layout's in `clip.py`);
3. a strict load: the key plan (`plan_keys`) checked against the target's keys and shapes
   (`require_matching_keys`), one ValueError listing every unused source key, every missing target key and
   every shape mismatch;
4. a check on a fixed deterministic input: the converted model's logits must match the source's within
   `LOGIT_ATOL` in float32 (`require_close`), or the converter raises instead of returning or writing.

`streaming.py` runs these parts on checkpoint files and on live models alike. Key templates use three
placeholders: `{n}` a layer index, `{wb}` "weight" or "bias", `{rest}` any key suffix. Converters log their
steps (tensors mapped, logit difference) on the `mosaic_vlm.conversion` loggers.
"""

import copy
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig

logger = logging.getLogger(__name__)

LOGIT_ATOL = 1e-4
"""Largest accepted absolute difference of the logits between source and converted model (fp32)."""


def keep(tensor: torch.Tensor) -> tuple[torch.Tensor]:
    return (tensor,)


@dataclass(frozen=True)
class TensorMap:
    """A pure tensor function and its inverse."""

    forward: Callable[..., tuple[torch.Tensor, ...]]
    inverse: Callable[..., tuple[torch.Tensor, ...]]

    def inverted(self) -> "TensorMap":
        return TensorMap(self.inverse, self.forward)


KEEP = TensorMap(keep, keep)


@dataclass(frozen=True)
class KeyRule:
    """One row of a key table: the source keys, the target keys, and the tensor map between them."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    tensors: TensorMap = KEEP

    def inverted(self) -> "KeyRule":
        return KeyRule(self.targets, self.sources, self.tensors.inverted())


def rule(source: str | tuple[str, ...], target: str | tuple[str, ...], tensors: TensorMap = KEEP) -> KeyRule:
    def as_tuple(keys):
        return (keys,) if isinstance(keys, str) else keys

    return KeyRule(as_tuple(source), as_tuple(target), tensors)


def invert(table: Iterable[KeyRule]) -> tuple[KeyRule, ...]:
    return tuple(row.inverted() for row in table)


_PLACEHOLDERS = {"n": r"\d+", "wb": "weight|bias", "rest": r".+"}


def _template_regex(template: str) -> re.Pattern:
    """'a.{n}.b.{wb}' -> r'a\\.(?P<n>\\d+)\\.b\\.(?P<wb>weight|bias)'."""
    literal_parts = re.split(r"\{(\w+)\}", template)  # literals at even indices, placeholder names at odd
    pattern = "".join(
        re.escape(part) if index % 2 == 0 else f"(?P<{part}>{_PLACEHOLDERS[part]})"
        for index, part in enumerate(literal_parts)
    )
    return re.compile(pattern)


@dataclass(frozen=True)
class PlannedTensors:
    """One applied key-table row: these source keys become these target keys through `tensors.forward`."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    tensors: TensorMap


def plan_keys(
    source_keys: Iterable[str], table: Iterable[KeyRule] | None, ignored: Iterable[str] = ()
) -> tuple[list[PlannedTensors], list[str]]:
    """Apply a key table to names only. Returns the planned rows and the source keys no row used (keys in
    `ignored` are skipped). A row with several sources (e.g. q, k, v -> in_proj) is used only when all are
    present. Without a table every key keeps its name."""
    ignored = set(ignored)
    remaining = {key for key in source_keys if key not in ignored}
    if table is None:
        return [PlannedTensors((key,), (key,), KEEP) for key in sorted(remaining)], []
    planned = []
    for row in table:
        first_source = _template_regex(row.sources[0])
        for key in sorted(remaining):
            match = first_source.fullmatch(key)
            if match is None or key not in remaining:
                continue
            fields = match.groupdict()
            sources = tuple(template.format(**fields) for template in row.sources)
            if not all(source in remaining for source in sources):
                continue
            planned.append(PlannedTensors(sources, tuple(t.format(**fields) for t in row.targets), row.tensors))
            remaining.difference_update(sources)
    return planned, sorted(remaining)


def summarise_keys(keys: Iterable[str], limit: int = 40) -> str:
    """Keys as one compact line, layer indices folded: 'a.[0-11].b, c' (at most `limit` entries)."""
    indices: dict[str, list[int]] = defaultdict(list)
    for key in sorted(keys):
        match = re.search(r"\.(\d+)\.", key)
        if match is None:
            indices[key] = []
        else:
            indices[key[: match.start(1)] + "\0" + key[match.end(1) :]].append(int(match.group(1)))
    entries = [key.replace("\0", f"[{_fold(numbers)}]") if numbers else key for key, numbers in indices.items()]
    more = f", ... and {len(entries) - limit} more" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more


def _fold(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    numbers = sorted(set(numbers))
    runs = []
    start = previous = numbers[0]
    for current in numbers[1:]:
        if current != previous + 1:
            runs.append((start, previous))
            start = current
        previous = current
    runs.append((start, previous))
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)


def require_matching_keys(
    provided: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    unused: list[str],
    source: str,
    target: str,
) -> None:
    """Raise one ValueError listing every unused source key, every provided tensor the target has no place
    for, every missing target key and every shape mismatch (shapes by key); nothing when all match."""
    unexpected = sorted(set(provided) - set(expected))
    missing = sorted(set(expected) - set(provided))
    wrong_shapes = [
        f"{key} {tuple(provided[key])} vs {tuple(expected[key])}"
        for key in sorted(set(provided) & set(expected))
        if tuple(provided[key]) != tuple(expected[key])
    ]
    problems = []
    if unused:
        problems.append(f"unused source keys: {summarise_keys(unused)}")
    if unexpected:
        problems.append(f"source tensors the model has no place for: {summarise_keys(unexpected)}")
    if missing:
        problems.append(f"missing target keys: {summarise_keys(missing)}")
    if wrong_shapes:
        problems.append(f"shape mismatches (checkpoint vs model): {', '.join(wrong_shapes)}")
    if problems:
        raise ValueError(f"Cannot load the {source} weights strictly into {target}: {'; '.join(problems)}.")


def require_close(reference: torch.Tensor, converted: torch.Tensor, reference_name: str) -> float:
    """Raise unless the converted logits (CLIP's `logits_per_image`, Fuyu's next-token logits) match the
    reference within LOGIT_ATOL; returns the largest difference."""
    if reference.shape != converted.shape:
        raise ValueError(
            f"Logit check failed: {reference_name} gives logits of shape {tuple(reference.shape)}, "
            f"the converted model {tuple(converted.shape)}."
        )
    difference = (reference.float().cpu() - converted.float().cpu()).abs().max().item()
    logger.info(
        "checking logits against %s: max |diff| %.2e (limit %.0e)",
        reference_name,
        difference,
        LOGIT_ATOL,
    )
    if not difference <= LOGIT_ATOL:  # `not <=` also refuses NaN
        raise ValueError(
            f"Logit check failed: the converted model differs from {reference_name} by {difference:.3e} "
            f"(max |diff| of the logits on the fixed input; limit {LOGIT_ATOL:.0e}). The conversion is refused."
        )
    return difference


@contextmanager
def float32_eval(model: nn.Module):
    """`model` in eval mode and float32, without gradients, for the check: a copy when it is in another
    dtype; the model's own mode is restored afterwards."""
    is_float32 = all(p.dtype == torch.float32 for p in model.parameters())
    checked = model if is_float32 else copy.deepcopy(model).float()
    was_training = model.training
    checked.eval()
    try:
        with torch.no_grad():
            yield checked
    finally:
        model.train(was_training)


def load_config_strictly(path: str | os.PathLike, config_class):
    """The config of a local save_pretrained folder, which must be a `config_class` (by model type); one
    ValueError (FileNotFoundError for a missing path) otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist.")
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder; pass a save_pretrained folder ({config_class.model_type!r}).")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path} holds no readable config.json: {error}") from error
    if config.model_type != config_class.model_type:
        raise ValueError(f"{path} holds a {config.model_type!r} model; expected a {config_class.model_type!r} one.")
    return config
