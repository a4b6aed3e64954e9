"""Real configurations, without weights: fuyu-8b and CLIP ViT-B/32, B/16, L/14, L/14-336 (transformers layout),
open_clip ViT-H/14 and ViT-bigG/14 (OpenAI layout), built on the meta device. Keys, shapes and parameter counts
must equal the reference's: transformers' own class, or the OpenAI key list written out below from open_clip's
architecture (whose parameter counts are open_clip's published ones)."""

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, FuyuConfig, FuyuForCausalLM

from mosaic_vlm.conversion.clip import OPENAI_KEY_TABLE, config_from_transformers, infer_openai_config
from mosaic_vlm.conversion.fuyu import TRANSFORMERS_FILE_KEY_TABLE
from mosaic_vlm.conversion.fuyu import config_from_transformers as fuyu_config
from mosaic_vlm.conversion.state_dict_mapping import invert, plan_keys
from mosaic_vlm.conversion.streaming import expected_shapes
from mosaic_vlm.modeling import MosaicClipConfig, MosaicClipModel, MosaicFuyuForCausalLM


def parameter_count(shapes: dict) -> int:
    return sum(torch.Size(shape).numel() for shape in shapes.values())


def test_fuyu_8b_matches_transformers_fuyu_on_the_meta_device():
    reference = FuyuConfig()  # transformers' defaults are adept/fuyu-8b's
    ours = expected_shapes(MosaicFuyuForCausalLM, fuyu_config(reference, image_newline_token_id=71019))
    theirs = expected_shapes(FuyuForCausalLM, reference)
    assert ours == theirs
    assert parameter_count(ours) == 9_408_238_592  # fuyu-8b: 9.41B parameters
    # the files of fuyu-8b hold these names: every one maps onto ours
    files = expected_shapes(FuyuForCausalLM, reference, invert(TRANSFORMERS_FILE_KEY_TABLE))  # as the converters plan
    assert "language_model.model.embed_tokens.weight" in files and "language_model.lm_head.weight" in files
    planned, unused = plan_keys(files, TRANSFORMERS_FILE_KEY_TABLE)
    assert unused == [] and sorted(row.targets[0] for row in planned) == sorted(ours)


# name -> (vision width, layers, heads, MLP, patch, image size; text width, layers, heads, MLP; projection),
# and open_clip's published parameter count (millions)
TRANSFORMERS_CLIPS = {
    "ViT-B-32": ((768, 12, 12, 3072, 32, 224), (512, 12, 8, 2048), 512, 151.28),
    "ViT-B-16": ((768, 12, 12, 3072, 16, 224), (512, 12, 8, 2048), 512, 149.62),
    "ViT-L-14": ((1024, 24, 16, 4096, 14, 224), (768, 12, 12, 3072), 768, 427.62),
    "ViT-L-14-336": ((1024, 24, 16, 4096, 14, 336), (768, 12, 12, 3072), 768, 427.94),
}


@pytest.mark.parametrize("name", TRANSFORMERS_CLIPS)
def test_clip_models_match_transformers_clip_on_the_meta_device(name):
    vision, text, projection, millions = TRANSFORMERS_CLIPS[name]
    reference = CLIPConfig(
        vision_config={"hidden_size": vision[0], "num_hidden_layers": vision[1], "num_attention_heads": vision[2],
                       "intermediate_size": vision[3], "patch_size": vision[4], "image_size": vision[5]},
        text_config={"hidden_size": text[0], "num_hidden_layers": text[1], "num_attention_heads": text[2],
                     "intermediate_size": text[3], "vocab_size": 49408, "eos_token_id": 49407, "bos_token_id": 49406},
        projection_dim=projection,
    )  # fmt: skip
    ours = expected_shapes(MosaicClipModel, config_from_transformers(reference))
    assert ours == expected_shapes(CLIPModel, reference)
    assert round(parameter_count(ours) / 1e6, 2) == millions


def open_clip_shapes(vision, text, embed_dim: int) -> dict[str, tuple[int, ...]]:
    """open_clip's state dict of a ViT CLIP, written out from its VisionTransformer / TextTransformer."""
    (width, layers, mlp, patch, image), (text_width, text_layers, text_mlp) = vision, text

    def blocks(prefix: str, width: int, layers: int, mlp: int) -> dict:
        block = {"ln_1.weight": (width,), "ln_1.bias": (width,), "attn.in_proj_weight": (3 * width, width),
                 "attn.in_proj_bias": (3 * width,), "attn.out_proj.weight": (width, width),
                 "attn.out_proj.bias": (width,), "ln_2.weight": (width,), "ln_2.bias": (width,),
                 "mlp.c_fc.weight": (mlp, width), "mlp.c_fc.bias": (mlp,), "mlp.c_proj.weight": (width, mlp),
                 "mlp.c_proj.bias": (width,)}  # fmt: skip
        return {f"{prefix}.{layer}.{key}": shape for layer in range(layers) for key, shape in block.items()}

    grid = image // patch
    return {
        "visual.conv1.weight": (width, 3, patch, patch), "visual.class_embedding": (width,),
        "visual.positional_embedding": (grid * grid + 1, width), "visual.ln_pre.weight": (width,),
        "visual.ln_pre.bias": (width,), **blocks("visual.transformer.resblocks", width, layers, mlp),
        "visual.ln_post.weight": (width,), "visual.ln_post.bias": (width,), "visual.proj": (width, embed_dim),
        "token_embedding.weight": (49408, text_width), "positional_embedding": (77, text_width),
        **blocks("transformer.resblocks", text_width, text_layers, text_mlp),
        "ln_final.weight": (text_width,), "ln_final.bias": (text_width,), "text_projection": (text_width, embed_dim),
        "logit_scale": (),
    }  # fmt: skip


OPEN_CLIPS = {  # (vision width, layers, MLP, patch, image), (text width, layers, MLP), embed dim, published M
    "ViT-H-14": ((1280, 32, 5120, 14, 224), (1024, 24, 4096), 1024, 986.11),
    "ViT-bigG-14": ((1664, 48, 8192, 14, 224), (1280, 32, 5120), 1280, 2539.57),
}


@pytest.mark.parametrize("name", OPEN_CLIPS)
def test_open_clip_models_match_the_openai_key_list_on_the_meta_device(name):
    vision, text, embed_dim, millions = OPEN_CLIPS[name]
    reference = open_clip_shapes(vision, text, embed_dim)
    assert round(parameter_count(reference) / 1e6, 2) == millions
    meta = {key: torch.empty(shape, device="meta") for key, shape in reference.items()}
    config = infer_openai_config(meta, hidden_act="gelu")
    assert isinstance(config, MosaicClipConfig) and config.vision_config.num_hidden_layers == vision[1]
    ours = expected_shapes(MosaicClipModel, config)
    assert expected_shapes(MosaicClipModel, config, invert(OPENAI_KEY_TABLE)) == reference  # what the converters plan
    assert parameter_count(ours) == parameter_count(reference)


def test_a_resnet_tower_is_refused_before_anything_else():
    state_dict = {
        "visual.conv1.weight": torch.zeros(32, 3, 3, 3, dtype=torch.int8),  # a dtype we would refuse too
        "visual.layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1),
        "visual.attnpool.positional_embedding": torch.zeros(50, 2048),
    }
    with pytest.raises(ValueError, match="ViT towers only"):
        infer_openai_config(state_dict)
    from mosaic_vlm.conversion.clip import clip_from_openai

    with pytest.raises(ValueError, match="ViT towers only"):
        clip_from_openai(state_dict)
