"""The core install (`pip install mosaic-vlm`, no extra) runs models, processors, conversion, the Hub commands
and inference; a command that needs the demo extra says so in one line. The package also imports from the
checkout's root, where the `mosaic_vlm/` folder stands beside the mapped `modeling/`, `processing/` and
`conversion/`."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Run first in a child process: the demo extra's modules are not found, as in a core install.
WITHOUT_DEMO_EXTRA = textwrap.dedent(
    """
    import sys

    from mosaic_vlm.cli.main import DEMO_EXTRA_MODULES

    for name in list(sys.modules):
        if name.partition(".")[0] in DEMO_EXTRA_MODULES:
            del sys.modules[name]
    for name in DEMO_EXTRA_MODULES:  # None in sys.modules: not found, as if not installed
        sys.modules[name] = None
    """
)


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_library_and_its_commands_need_no_demo_extra(tmp_path):
    code = WITHOUT_DEMO_EXTRA + textwrap.dedent(
        """
        import mosaic_vlm, mosaic_vlm.conversion, mosaic_vlm.modeling, mosaic_vlm.processing, mosaic_vlm.vstar
        from mosaic_vlm.cli.main import build_parser
        from mosaic_vlm.processing import MosaicFuyuImageProcessor, MosaicFuyuProcessor, train_bpe_tokenizer

        build_parser()  # every command's parser, the demo's included
        tokenizer = train_bpe_tokenizer(["what digit is this"] * 4, vocab_size=60, model_max_length=64)
        processor = MosaicFuyuProcessor(MosaicFuyuImageProcessor(patch_size=16), tokenizer)
        print("core ok")
        """
    )
    result = run_python(code, tmp_path)
    assert result.returncode == 0 and "core ok" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize(
    "command", [["demo", "--quick", "--output-dir", "out"], ["train", "clip", "--output_dir", "out"]]
)
def test_a_command_that_needs_the_demo_extra_says_which_in_one_line(tmp_path, command):
    code = WITHOUT_DEMO_EXTRA + f"from mosaic_vlm.cli.main import main\nsys.exit(main({command!r}))\n"
    result = run_python(code, tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].endswith("install the demo extra: pip install 'mosaic-vlm[demo]'")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_package_imports_from_the_checkout_root():
    result = run_python("import mosaic_vlm.modeling, mosaic_vlm.conversion; print(mosaic_vlm.modeling.__file__)", ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert Path(result.stdout.strip()).parent == ROOT / "modeling"
    result = subprocess.run(
        [sys.executable, "-m", "mosaic_vlm.cli", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "convert" in result.stdout, result.stderr[-3000:]


def test_the_supported_releases_are_those_setup_cfg_installs():
    from mosaic_vlm import SUPPORTED_RELEASES

    requirements = set((ROOT / "setup.cfg").read_text().split("install_requires =")[1].split("\n\n")[0].split())
    assert {f"{name}{releases}" for name, releases in SUPPORTED_RELEASES.items()} <= requirements


@pytest.mark.parametrize("name, release", [("transformers", "4.57.6"), ("transformers", "6.0.0"), ("torch", "2.4.1")])
def test_an_unsupported_release_is_refused_at_import_in_one_line(tmp_path, name, release):
    # metadata that reports `release` ahead of the installed one on sys.path, as an install outside the range would
    metadata = tmp_path / f"{name}-{release}.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {release}\n")
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import mosaic_vlm.modeling"
    result = run_python(code, tmp_path)
    supported = {"transformers": ">=5.20,<6", "torch": ">=2.6"}[name]
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"ImportError: mosaic-vlm needs {name}{supported}; {name} {release} is installed. Install a supported "
        f"release: pip install '{name}{supported}'"
    )
