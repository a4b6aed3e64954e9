"""The base both model families share: remote-code auto_map, the Hub model card and the
weight-initialisation dispatch."""

import os

from transformers import PreTrainedModel

from .hub_card import model_card


class MosaicPreTrainedModel(PreTrainedModel):
    # Every Auto class registered for the family -> the class (in this model's file) it resolves to; None
    # stands for the model's own class. Written into config.auto_map when saved as remote code.
    _remote_auto_classes: dict[str, str | None] = {"AutoModel": None}

    def save_pretrained(self, save_directory, *args, **kwargs):
        if self._auto_class is not None:
            module = type(self).__module__.split(".")[-1]
            self.config.auto_map = {
                **getattr(self.config, "auto_map", {}),
                **{auto: f"{module}.{name or type(self).__name__}" for auto, name in self._remote_auto_classes.items()},
            }
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _upload_modified_files(self, working_dir, repo_id: str, *args, **kwargs):
        # push_to_hub's last step, after save_pretrained: our model card replaces transformers' generic one
        model_card(self, repo_id).save(os.path.join(working_dir, "README.md"))
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)

    def _initialize_weights(self, module, is_custom_code: bool = False):
        # For custom code transformers skips every module without parameters of its own (`all()` over none
        # is True), which would skip `_init_weights` branches for container modules (attention, MLP). Our
        # `_init_weights` only writes through `transformers.initialization`, which leaves loaded weights
        # alone, so the guard is not needed.
        super()._initialize_weights(module, is_custom_code=False)
