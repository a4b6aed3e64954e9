"""The base both model families share: remote-code auto_map and the weight-initialisation dispatch."""

from transformers import PreTrainedModel


class MosaicPreTrainedModel(PreTrainedModel):
    # Every Auto class that resolves to the model; written into config.auto_map when saved as remote code.
    _remote_auto_classes: tuple[str, ...] = ("AutoModel",)

    def save_pretrained(self, save_directory, *args, **kwargs):
        if self._auto_class is not None:
            target = f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"
            self.config.auto_map = {
                **getattr(self.config, "auto_map", {}),
                **{auto_class: target for auto_class in self._remote_auto_classes},
            }
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _initialize_weights(self, module, is_custom_code: bool = False):
        # For custom code transformers skips every module without parameters of its own (`all()` over none
        # is True), which would skip `_init_weights` branches for container modules (attention, MLP). Our
        # `_init_weights` only writes through `transformers.initialization`, which leaves loaded weights
        # alone, so the guard is not needed.
        super()._initialize_weights(module, is_custom_code=False)
