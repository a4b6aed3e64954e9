"""Every python snippet of the README runs, against tiny models saved where the demo saves its own."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mosaic_vlm.recipes import clip as train_clip
from mosaic_vlm.recipes import fuyu as train_fuyu
from mosaic_vlm.recipes import vstar as train_vstar

ROOT = Path(__file__).resolve().parent.parent

SNIPPETS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)


@pytest.fixture(scope="module")
def demo_folders(tmp_path_factory):
    """demo-output/{clip,fuyu,vstar,vstar-search}, as `./dev demo` leaves them, with tiny untrained models."""
    root = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    clip_processor = train_clip.build_processor(32)
    clip_args = train_clip.ModelArguments(hidden_size=32, num_hidden_layers=1, projection_dim=16)
    train_clip.build_model(clip_args, clip_processor.tokenizer).save_pretrained(root / "demo-output" / "clip")
    clip_processor.save_pretrained(root / "demo-output" / "clip")
    fuyu_processor = train_fuyu.build_processor(32, 8)
    fuyu_args = train_fuyu.ModelArguments(hidden_size=32, num_hidden_layers=1)
    train_fuyu.build_model(fuyu_args, fuyu_processor.tokenizer).save_pretrained(root / "demo-output" / "fuyu")
    fuyu_processor.save_pretrained(root / "demo-output" / "fuyu")
    vstar_processor = train_vstar.build_processor(48, 12)
    vstar_args = train_vstar.VStarArguments(hidden_size=32, num_hidden_layers=1)
    for name in ("vstar", "vstar-search"):
        train_vstar.build_model(vstar_args, vstar_processor.tokenizer).save_pretrained(root / "demo-output" / name)
        vstar_processor.save_pretrained(root / "demo-output" / name)
    return root


def test_the_readme_has_a_snippet_per_family_and_for_vstar():
    assert len(SNIPPETS) >= 3
    assert any("AutoModel.from_pretrained" in s for s in SNIPPETS) and any("vstar_generate" in s for s in SNIPPETS)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(demo_folders, index):
    result = subprocess.run(
        [sys.executable, "-c", SNIPPETS[index]],
        cwd=demo_folders,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, f"snippet {index}:\n{SNIPPETS[index]}\n{result.stderr[-3000:]}"
