"""The base both model families share: remote-code auto_map, the Hub model card hook, the weight-initialisation
dispatch, and the helpers their forward passes share (output flags, renamed arguments, input checks)."""

import functools
import os
import warnings
from collections.abc import Callable

import torch
from transformers import PreTrainedModel

from .mosaic_transformers_compat import torch_compilable_check

OUTPUT_FLAGS = ("output_attentions", "output_hidden_states")


def output_flags_default_to_config(forward):
    """Put outside `capture_outputs`: an output flag passed as None means "as the config says", as when it is left
    out (`capture_outputs` reads an explicit None as False, which would ignore `config.output_hidden_states`)."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        for flag in OUTPUT_FLAGS:
            if flag in kwargs and kwargs[flag] is None:
                del kwargs[flag]
        return forward(self, *args, **kwargs)

    return wrapper


def renamed_argument(old: str, new: str, removed_in: str):
    """A forward decorator: `old=` is moved to `new=` with a FutureWarning naming the mosaic-vlm release that
    drops it. (transformers' `deprecate_kwarg` compares `removed_in` against transformers' own version, so its
    warning would vanish on a newer transformers.) Both given is one clear error."""

    def decorator(forward):
        @functools.wraps(forward)
        def wrapper(self, *args, **kwargs):
            if kwargs.get(old) is not None:
                if kwargs.get(new) is not None:
                    raise ValueError(f"Pass `{new}` only: `{old}` is its deprecated name.")
                warnings.warn(
                    f"`{old}` is deprecated and will be removed in mosaic-vlm {removed_in}. Use `{new}` instead.",
                    FutureWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return forward(self, *args, **kwargs)

        return wrapper

    return decorator


def is_tracing() -> bool:
    """True while torch.compile, torch.export (and so ONNX's dynamo export and transformers' exporters) or torch.jit
    trace the forward pass."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def check_values(condition: Callable[[], torch.Tensor | bool], message: str | Callable[[], str]) -> None:
    """A check on the values of input tensors: one clear ValueError in eager, nothing at all while traced. Traced,
    reading a tensor's values would break the graph on every call (`.item()`) or leave assert ops in an exported
    program (ONNX has none for them); the condition is a callable, so not even the comparison is traced."""
    if not is_tracing():
        torch_compilable_check(condition(), message)


def check_token_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """A clear ValueError for token ids outside [0, vocab_size) (torch's embedding lookup raises an IndexError that
    names neither); free under torch.compile and export (see `check_values`)."""
    check_values(
        lambda: (input_ids >= 0) & (input_ids < vocab_size),
        lambda: (
            f"input_ids holds token id {input_ids[(input_ids < 0) | (input_ids >= vocab_size)][0].item()}, outside "
            f"the vocabulary of {vocab_size} tokens (ids 0 to {vocab_size - 1})."
        ),
    )


class MosaicPreTrainedModel(PreTrainedModel):
    # Every Auto class registered for the family -> the class (in this model's file) it resolves to; None
    # stands for the model's own class. Written into config.auto_map when saved as remote code.
    _remote_auto_classes: dict[str, str | None] = {"AutoModel": None}
    # (model, repo_id) -> the huggingface_hub ModelCard a push writes. Set for each family by mosaic_vlm's
    # registration from its family table; a model loaded as remote code without the package keeps None, and its
    # push writes transformers' generic card.
    model_card_builder = None

    def save_pretrained(self, save_directory, *args, **kwargs):
        if self._auto_class is not None:
            module = type(self).__module__.split(".")[-1]
            self.config.auto_map = {
                **getattr(self.config, "auto_map", {}),
                **{
                    auto: f"{module}.{name or type(self).__name__}" for auto, name in self._remote_auto_classes.items()
                },
            }
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _upload_modified_files(self, working_dir, repo_id: str, *args, **kwargs):
        # Private hook, kept because no public one exists: push_to_hub saves into a scratch folder, writes
        # transformers' generic card there, then calls this upload step; our card has to replace the generic one in
        # between. Overriding the public push_to_hub instead would mean copying its repo, tagging and commit logic.
        if self.model_card_builder is not None:
            self.model_card_builder(self, repo_id).save(os.path.join(working_dir, "README.md"))
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)

    def _initialize_weights(self, module, is_custom_code: bool = False):
        # Private hook, kept because no public one exists: for custom code (any class outside transformers)
        # transformers skips every module without parameters of its own (`all()` over none is True), so the
        # `_init_weights` branches of container modules (attention, MLP) would never run. Our `_init_weights` writes
        # only through `transformers.initialization`, which leaves loaded weights alone, so that guard is not needed.
        # The public `is_custom_code()` also gates from_pretrained's handling of module-tied weights, so overriding it
        # would change more than initialisation.
        super()._initialize_weights(module, is_custom_code=False)
