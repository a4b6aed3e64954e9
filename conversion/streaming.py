"""The conversion engine: one implementation of planning, strict loading and checking, for checkpoint files
(streamed, never two whole models in memory) and for live models alike.

1. A checkpoint is a Mapping of tensors with shapes and dtypes readable up front: `LazyCheckpoint` reads
   safetensors headers first (keys, shapes, dtypes), then tensors on demand (`safe_open`); `StateDictCheckpoint`
   reads a live model's `state_dict()`.
2. The key table is planned on names (`plan_keys`) and checked against the target's keys and shapes (a model
   built on the meta device): every unused, missing or mis-shaped key is refused before anything is written or
   loaded (`plan_conversion`).
3. The planned rows run one at a time: into shards (`stream_tensors`, `ShardedWriter`: each tensor in the
   source dtype or `dtype`, shards of at most `max_shard_size` bytes, with `model.safetensors.index.json` when
   there is more than one), into a model in memory (`load_converted`), or into a dict (`convert_tensors`).
4. `verify_outputs` runs the source and the converted model on a fixed input in float32: every layer's output,
   then the logits, must agree. Weights left on disk (`offloaded_model`: accelerate's offload hooks load each
   module's weights only while it runs) and live models (`reference_model`) are checked the same way.

A `Converter` is one family's conversion from one layout to another with the signature every family shares.
"""

import json
import logging
import os
import re
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from accelerate import init_empty_weights
from accelerate.hooks import attach_align_device_hook, remove_hook_from_module
from accelerate.utils import OffloadedWeightsLoader
from safetensors import SafetensorError, safe_open
from torch import nn
from tqdm.auto import tqdm
from transformers.initialization import no_init_weights

from .state_dict_mapping import (
    LOGIT_ATOL,
    KeyRule,
    PlannedTensors,
    float32_eval,
    load_config_strictly,
    plan_keys,
    require_close,
    require_matching_keys,
)

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = "1GB"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool}  # fmt: skip


def parse_size(size: str | int) -> int:
    """'500MB', '2GB', '1.5GiB' or a number of bytes -> bytes."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", size)
    if match is None or match.group(2).upper() not in _SIZE_UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"A size must be a positive number with a unit (B, KB, MB, GB, KiB, MiB, GiB), got {size!r}.")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


class Checkpoint(Mapping):
    """Tensors by key whose shapes and dtypes can be read without reading the tensors."""

    @abstractmethod
    def shape(self, key: str) -> tuple[int, ...]: ...

    @abstractmethod
    def dtype(self, key: str) -> torch.dtype: ...

    def floating_dtype(self, ignored=()) -> torch.dtype:
        """The dtype of the floating-point tensors (keys in `ignored` aside), float32 when they mix dtypes."""
        dtypes = {self.dtype(key) for key in self if key not in ignored and self.dtype(key).is_floating_point}
        return dtypes.pop() if len(dtypes) == 1 else torch.float32


class StateDictCheckpoint(Checkpoint):
    """A live model's `state_dict()` (or any mapping of tensors) read as a checkpoint."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self._tensors = tensors

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._tensors[key].dtype


def as_checkpoint(tensors: Mapping[str, torch.Tensor]) -> Checkpoint:
    return tensors if isinstance(tensors, Checkpoint) else StateDictCheckpoint(tensors)


class LazyCheckpoint(Checkpoint):
    """A safetensors checkpoint read lazily: one file, or a folder holding model.safetensors or shards listed in
    model.safetensors.index.json. Headers are read up front; a missing, truncated or corrupted file, or an
    index naming a missing file or key, is one ValueError."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist.")
        if path.is_dir() and (path / WEIGHTS_INDEX_NAME).is_file():
            try:
                weight_map = json.loads((path / WEIGHTS_INDEX_NAME).read_text())["weight_map"]
            except (ValueError, KeyError) as error:
                raise ValueError(f"{path / WEIGHTS_INDEX_NAME} is not a safetensors index: {error}") from error
            files = {key: path / name for key, name in weight_map.items()}
        elif path.is_dir():
            if not (path / WEIGHTS_NAME).is_file():
                raise ValueError(
                    f"{path} holds no {WEIGHTS_NAME} nor {WEIGHTS_INDEX_NAME}; weights are read only "
                    "from safetensors (loading a pickle can run code)."
                )
            files = None
            path = path / WEIGHTS_NAME
        else:
            files = None
        self._files: dict[str, Path] = {}
        self._headers: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for file in sorted(set(files.values())) if files is not None else [path]:
            if file.suffix != ".safetensors":
                raise ValueError(f"{file} is not a .safetensors file; weights are read only from safetensors.")
            if not file.is_file():
                raise ValueError(f"The shard index names {file.name}, which is not in {file.parent}.")
            with self._open(file) as handle:
                for key in handle.keys():
                    tensor_slice = handle.get_slice(key)
                    if tensor_slice.get_dtype() not in _SAFETENSORS_DTYPES:
                        raise ValueError(
                            f"{file}: tensor {key} is stored as {tensor_slice.get_dtype()}, which mosaic-vlm does "
                            "not read; weights must be float32, float16 or bfloat16."
                        )
                    self._files[key] = file
                    self._headers[key] = (
                        tuple(tensor_slice.get_shape()),
                        _SAFETENSORS_DTYPES[tensor_slice.get_dtype()],
                    )
        if files is not None:
            missing = sorted(key for key, file in files.items() if self._files.get(key) != file)
            if missing:
                raise ValueError(f"The shard index lists tensors its shards do not hold: {missing[:5]}.")

    @staticmethod
    def _open(file: Path):
        """The file opened (memory-mapped) by safetensors. Each read opens it anew: the map lives only as long as
        the tensors read from it, so resident memory holds what is in use, not every page read so far."""
        try:  # safetensors checks that the header covers the whole file: a truncated file fails here
            return safe_open(file, framework="pt")
        except (SafetensorError, OSError) as error:
            raise ValueError(
                f"{file} is not a readable safetensors file (truncated or corrupted?): {error}"
            ) from error

    def __getitem__(self, key: str) -> torch.Tensor:
        try:
            with self._open(self._files[key]) as handle:
                return handle.get_tensor(key)
        except SafetensorError as error:
            raise ValueError(f"{self._files[key]}: tensor {key} cannot be read (truncated file?): {error}") from error

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._headers[key][0]

    def dtype(self, key: str) -> torch.dtype:
        return self._headers[key][1]

    @property
    def nbytes(self) -> int:
        return sum(file.stat().st_size for file in set(self._files.values()))

    def offload_index(self, names: Callable[[str], str] = lambda key: key) -> dict[str, dict]:
        """accelerate's index of weights kept on disk: each tensor read from its own file when needed."""
        return {
            names(key): {
                "safetensors_file": str(file),
                "weight_name": key,
                "dtype": str(self.dtype(key)).split(".")[1],
            }
            for key, file in self._files.items()
        }


class ShardedWriter:
    """Writes tensors into safetensors shards of at most `max_shard_size` bytes (a larger tensor gets a shard
    of its own), named as transformers names them, with the index when there is more than one shard. Holds
    at most one shard's tensors in memory."""

    def __init__(self, folder: Path, max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE):
        self.folder, self.max_bytes = Path(folder), parse_size(max_shard_size)
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_bytes:
            self._flush()
        self._pending[key] = tensor.contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        safetensors.torch.save_file(self._pending, self._shard_path(len(self._shards)), metadata={"format": "pt"})
        self._shards.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def _shard_path(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.partial.safetensors"

    def close(self) -> list[Path]:
        """Write the last shard, give the shards their final names and write the index; returns the files."""
        if self._pending or not self._shards:
            self._flush()
        count = len(self._shards)
        if count == 1:
            os.rename(self._shard_path(0), self.folder / WEIGHTS_NAME)
            return [self.folder / WEIGHTS_NAME]
        weight_map, files = {}, []
        for index, keys in enumerate(self._shards):
            name = f"model-{index + 1:05d}-of-{count:05d}.safetensors"
            os.rename(self._shard_path(index), self.folder / name)
            weight_map.update(dict.fromkeys(keys, name))
            files.append(self.folder / name)
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return files


def expected_shapes(model_class, config, table: tuple[KeyRule, ...] | None = None) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of `model_class(config)`, built on the meta device (no memory), named through `table`
    when given (the shapes of the layout the table writes)."""
    with torch.device("meta"):
        model = model_class(config)
    if table is None:
        return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    return planned_shapes(StateDictCheckpoint(model.state_dict()), table)[1]


def planned_shapes(checkpoint: Checkpoint, table: tuple[KeyRule, ...] | None, ignored=()):
    """The key plan of `checkpoint` through `table`, the target shapes it gives (the tensor maps run on meta
    tensors) and the unused source keys."""
    planned, unused = plan_keys(checkpoint, table, ignored)
    shapes = {}
    for row in planned:
        metas = [torch.empty(checkpoint.shape(key), dtype=checkpoint.dtype(key), device="meta") for key in row.sources]
        shapes.update({key: tuple(tensor.shape) for key, tensor in zip(row.targets, row.tensors.forward(*metas))})
    return planned, shapes, unused


def plan_conversion(
    checkpoint: Checkpoint,
    table: tuple[KeyRule, ...] | None,
    expected: Mapping[str, tuple[int, ...]],
    source_name: str,
    target_name: str,
    *,
    ignored=(),
) -> list[PlannedTensors]:
    """The planned rows of `checkpoint` through `table`, checked strictly against the `expected` target shapes
    (`require_matching_keys`) and for float weights, before any tensor is read."""
    planned, shapes, unused = planned_shapes(checkpoint, table, ignored)
    require_matching_keys(shapes, expected, unused, source_name, target_name)
    odd = sorted(
        {
            f"{key} ({checkpoint.dtype(key)})"
            for row in planned
            for key in row.sources
            if checkpoint.dtype(key) not in DTYPES.values()
        }
    )
    if odd:
        raise ValueError(f"The {source_name} weights must be float32, float16 or bfloat16; got {', '.join(odd[:5])}.")
    return planned


def convert_row(checkpoint: Checkpoint, row: PlannedTensors, round_trip: bool = False):
    """The (target key, tensor) pairs of one planned row. With `round_trip`, the row's tensors must come back bit
    for bit through its inverse map."""
    sources = [checkpoint[key] for key in row.sources]
    outputs = row.tensors.forward(*sources)
    if round_trip and not all(map(torch.equal, row.tensors.inverse(*outputs), sources)):
        raise ValueError(f"Round-trip check failed: converting back does not reproduce {', '.join(row.sources)}.")
    return zip(row.targets, outputs, strict=True)


def stream_tensors(
    checkpoint: LazyCheckpoint,
    folder: Path,
    table: tuple[KeyRule, ...] | None,
    expected: Mapping[str, tuple[int, ...]],
    source_name: str,
    target_name: str,
    *,
    ignored=(),
    dtype: torch.dtype | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    round_trip: bool = False,
) -> list[Path]:
    """Plan and check (`plan_conversion`), then write every target tensor (in the source dtype unless `dtype` is
    given) into shards in `folder`, one planned row in memory at a time."""
    planned = plan_conversion(checkpoint, table, expected, source_name, target_name, ignored=ignored)
    writer = ShardedWriter(folder, max_shard_size)
    for row in tqdm(planned, desc=f"writing {target_name} tensors", unit="tensor", leave=False):
        for key, tensor in convert_row(checkpoint, row, round_trip):
            writer.add(key, tensor if dtype is None else tensor.to(dtype))
    files = writer.close()
    logger.info("wrote %d tensors (%.2f GB) in %d shard(s)", len(expected), writer.total_bytes / 1e9, len(files))
    if round_trip:
        logger.info("round trip: every source tensor comes back bit for bit through the key table")
    return files


def convert_tensors(
    checkpoint: Checkpoint,
    table: tuple[KeyRule, ...] | None,
    expected: Mapping[str, tuple[int, ...]],
    source_name: str,
    target_name: str,
    *,
    ignored=(),
    round_trip: bool = False,
) -> dict[str, torch.Tensor]:
    """`stream_tensors` into a dict: the same plan and checks, every target tensor in memory."""
    planned = plan_conversion(checkpoint, table, expected, source_name, target_name, ignored=ignored)
    return {key: tensor for row in planned for key, tensor in convert_row(checkpoint, row, round_trip)}


def load_converted(
    model_class,
    config,
    checkpoint: Checkpoint,
    table: tuple[KeyRule, ...] | None,
    source_name: str,
    *,
    ignored=(),
    round_trip: bool = False,
) -> nn.Module:
    """`stream_tensors` into a model: a float32 `model_class(config)` in eval mode holding `checkpoint` converted
    through `table` (without a table the names already match), planned and checked strictly against the model's
    own keys and shapes, then copied in one row at a time."""
    with no_init_weights():  # every weight is overwritten below
        model = model_class(config).float()
    targets = model.state_dict()
    expected = {key: tuple(tensor.shape) for key, tensor in targets.items()}
    planned = plan_conversion(checkpoint, table, expected, source_name, model_class.__name__, ignored=ignored)
    logger.info("mapping %d source tensors to %d %s tensors", len(checkpoint), len(expected), model_class.__name__)
    with torch.no_grad():
        for row in planned:
            for key, tensor in convert_row(checkpoint, row, round_trip):
                targets[key].copy_(tensor)
    if round_trip:
        logger.info("round trip: every source tensor comes back bit for bit through the key table")
    return model.eval()


def source_of(model_or_path, config_class, model_class):
    """(config, checkpoint, source) of a conversion from a live `model_class` or from a local save_pretrained
    folder of one (its config read strictly, its weights left in its safetensors files). `source` is what the
    checks run (`reference_model`) and what the result is placed like (`placed_like`): the live model, or the
    folder's `LazyCheckpoint`."""
    if isinstance(model_or_path, (str, os.PathLike)):
        config = load_config_strictly(model_or_path, config_class)
        checkpoint = LazyCheckpoint(model_or_path)
        return config, checkpoint, checkpoint
    if not isinstance(model_or_path, model_class):
        raise TypeError(
            f"Expected a transformers {model_class.__name__} or a path to one, got {type(model_or_path).__name__}."
        )
    return model_or_path.config, StateDictCheckpoint(model_or_path.state_dict()), model_or_path


def placed_like(model: nn.Module, source: nn.Module | Checkpoint) -> nn.Module:
    """`model` on the device and in the dtype of a live `source`, or in a checkpoint's dtype (on the CPU)."""
    if isinstance(source, nn.Module):
        return model.to(device=source.device, dtype=source.dtype)
    return model.to(source.floating_dtype())


class RoundedWeights(Mapping):
    """Weights read as if stored in `dtype` (a reference for a conversion that changes the dtype)."""

    def __init__(self, weights: Mapping, dtype: torch.dtype):
        self._weights, self._dtype = weights, dtype

    def __getitem__(self, key: str) -> torch.Tensor:
        tensor = self._weights[key]
        return tensor.to(self._dtype) if tensor.is_floating_point() else tensor

    def __iter__(self):
        return iter(self._weights)

    def __len__(self) -> int:
        return len(self._weights)


def offloaded_model(
    model_class,
    config,
    checkpoint: LazyCheckpoint,
    table: tuple[KeyRule, ...] | None = None,
    rounded_to: torch.dtype | None = None,
) -> torch.nn.Module:
    """`model_class(config)` in float32 eval mode whose weights stay in `checkpoint`'s files (named through
    `table`, whose rows must keep tensors as they are; rounded to `rounded_to` when given): accelerate's hooks
    load each module's own weights when it runs and drop them after, so memory holds one module at a time."""
    planned, _ = plan_keys(checkpoint, table)
    names = {row.sources[0]: row.targets[0] for row in planned if len(row.sources) == len(row.targets) == 1}
    with init_empty_weights():
        model = model_class(config)
    model = model.float().eval()
    # transformer layers and embeddings load all their weights when they start: one layer in memory at a time,
    # and embeddings may read a child's weight directly (position tables) instead of calling it
    preloaded = {
        type(module).__name__
        for name, module in model.named_modules()
        if re.search(r"(\.layers\.\d+|embeddings)$", name)
    }
    weights = OffloadedWeightsLoader(index=checkpoint.offload_index(lambda key: names.get(key, key)))
    attach_align_device_hook(
        model, execution_device=torch.device("cpu"), offload=True,
        weights_map=weights if rounded_to is None else RoundedWeights(weights, rounded_to),
        preload_module_classes=sorted(preloaded),
    )  # fmt: skip
    return model


@contextmanager
def reference_model(
    source: nn.Module | LazyCheckpoint,
    model_class=None,
    config=None,
    table: tuple[KeyRule, ...] | None = None,
    rounded_to: torch.dtype | None = None,
) -> Iterator[nn.Module]:
    """A model to check a conversion against, in float32 and eval mode, without gradients: a live model (a float32
    copy when it is in another dtype; its own mode is restored after), or `model_class(config)` with its weights
    left in the checkpoint `source` (`offloaded_model`)."""
    if isinstance(source, nn.Module):
        with float32_eval(source) as model:
            yield model
        return
    model = offloaded_model(model_class, config, source, table, rounded_to)
    try:
        with torch.no_grad():
            yield model
    finally:
        release(model)


def input_device(model: nn.Module) -> torch.device:
    """Where `model` takes its inputs: its weights' device, the CPU when they are left on disk."""
    device = next(model.parameters()).device
    return torch.device("cpu") if device.type == "meta" else device


def layer_outputs(model: torch.nn.Module, run: Callable[[torch.nn.Module], torch.Tensor]):
    """`run(model)` (the final output) and the output of every transformer layer (modules named `*.layers.N`)."""
    captured, handles = {}, []
    for name, module in model.named_modules():
        if re.search(r"\.layers\.\d+$", name):
            handles.append(
                module.register_forward_hook(
                    lambda module, args, output, name=name: captured.__setitem__(
                        name, (output[0] if isinstance(output, tuple) else output).detach().to("cpu", copy=True)
                    )
                )
            )
    try:
        with torch.no_grad():
            final = run(model)
    finally:
        for handle in handles:
            handle.remove()
    return final, captured


def verify_outputs(reference, converted, run_reference, run_converted, reference_name: str) -> None:
    """Both models run on the fixed input: every layer output (max |diff| <= LOGIT_ATOL relative to the
    reference's scale) and the logits (`require_close`) must agree, or this raises."""
    reference_final, reference_layers = layer_outputs(reference, run_reference)
    converted_final, converted_layers = layer_outputs(converted, run_converted)
    if sorted(reference_layers) != sorted(converted_layers):
        raise ValueError(f"Layer check failed: the layers differ from {reference_name}'s.")
    for name in tqdm(sorted(reference_layers, key=_layer_order), desc="checking layers", leave=False):
        expected, got = reference_layers[name], converted_layers[name]
        difference = (expected.float() - got.float()).abs().max().item()
        if not difference <= LOGIT_ATOL * max(1.0, expected.abs().max().item()):
            raise ValueError(
                f"Layer check failed at {name}: the converted layer differs from {reference_name}'s "
                f"by {difference:.3e} on the fixed input. The conversion is refused."
            )
    logger.info("every one of %d layers matches %s on the fixed input", len(reference_layers), reference_name)
    require_close(reference_final, converted_final, reference_name)


def _layer_order(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in name.split("."))


def release(*models: torch.nn.Module) -> None:
    for model in models:
        remove_hook_from_module(model, recurse=True)


def save_model_files(model_class, config, folder: Path, dtype: torch.dtype) -> None:
    """Everything `save_pretrained` writes but the weights (config, generation config, remote code and its
    auto_map), from a model built on the meta device; `config.dtype` records the weights' dtype."""
    config.dtype = dtype
    with torch.device("meta"):
        model = model_class(config)
    model.save_pretrained(folder, state_dict={})


@dataclass(frozen=True)
class Converter:
    """One family's conversion from one layout to another, as `mosaic-vlm convert` runs it. Every entry is called
    the same way: `converter(source, output, *, dtype=None, max_shard_size=DEFAULT_MAX_SHARD_SIZE, **options)`
    streams the checkpoint `source` (a safetensors file or folder) into the folder `output` (created), one tensor
    at a time in the source dtype (or `dtype`), and checks it against the source; a failed check raises. `options`
    are the family's own keyword options, which each entry declares (CLIP from openai: `activation`); any other
    is one ValueError naming those it accepts."""

    family: str
    source_layout: str
    target_layout: str
    options: tuple[str, ...]
    # function(source, output, *, source_layout, target_layout, dtype, max_shard_size, **options)
    function: Callable[..., None]

    def __call__(
        self,
        source: str | os.PathLike,
        output: str | os.PathLike,
        *,
        dtype: torch.dtype | None = None,
        max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
        **options,
    ) -> None:
        undeclared = sorted(set(options) - set(self.options))
        if undeclared:
            accepted = ", ".join(f"{name}=" for name in ("dtype", "max_shard_size", *self.options))
            raise ValueError(
                f"The {self.family} conversion from {self.source_layout} to {self.target_layout} takes no "
                f"{', '.join(f'{name}=' for name in undeclared)}; it accepts {accepted}."
            )
        if dtype is not None and dtype not in DTYPES.values():
            raise ValueError(f"dtype= must be None or one of {', '.join(map(str, DTYPES.values()))}, got {dtype!r}.")
        parse_size(max_shard_size)
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
        self.function(
            Path(source),
            output,
            source_layout=self.source_layout,
            target_layout=self.target_layout,
            dtype=dtype,
            max_shard_size=max_shard_size,
            **options,
        )
