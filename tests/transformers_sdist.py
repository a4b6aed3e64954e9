"""transformers' own common test mixins (ModelTesterMixin, ConfigTester, ImageProcessingTestMixin,
ProcessorTesterMixin), taken from the source distribution of the installed transformers version.

The sdist is fetched once from the configured package registry with pip (`pip download --no-binary :all:
--no-deps transformers==<installed>`), and the mixin files of its tests/ folder are unpacked as the package
`mosaic_vlm_transformers_tests.transformers_common_tests` into the virtual environment's site-packages (as an
install would put them), never into this repository; it is then imported like any installed package.

The sdist leaves out a few modules those files import; small stand-ins are written next to them:
- `exporters/test_export.py`: ExportTesterMixin and ExportGenerateTesterMixin from tests/export_tester_mixin.py,
  transformers' export tests written for the installed release's exporters (the repository's file targets newer
  exporter modules);
- `generation/test_utils.py`: an empty GenerationTesterMixin (our generation tests are in
  tests/models/test_generation_fuyu.py);
- `utils/test_configuration_utils.py`: the common config kwargs ConfigTester sets (PreTrainedConfig's common
  fields, each with a non-default value);
- `utils/fetch_hub_objects_for_ci.py` (beside the package, where the mixins look for it): the CI's Hub fixture
  cache, which hands every URL back unchanged (the
  tests that read Hub fixtures are the ones that do not run without the Hub).
The mixins also need `parameterized` (in the test extras).
"""

import contextlib
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

import transformers
from transformers.models.auto import modeling_auto

ROOT_PACKAGE = "mosaic_vlm_transformers_tests"  # in site-packages; holds the mixins' package and its utils/
PACKAGE = "transformers_common_tests"
MIXIN_FILES = (
    "test_modeling_common.py",
    "test_configuration_common.py",
    "test_image_processing_common.py",
    "test_processing_common.py",
)

STAND_INS = {
    "__init__.py": "",
    f"{PACKAGE}/__init__.py": "",
    f"{PACKAGE}/exporters/__init__.py": "",
    # the sdist does not ship tests/exporters: tests/export_tester_mixin.py holds the export mixins, written for the
    # installed release's transformers.exporters (on sys.path under pytest, as every shared helper in tests/)
    f"{PACKAGE}/exporters/test_export.py": """
from export_tester_mixin import ExportGenerateTesterMixin, ExportTesterMixin  # noqa: F401
""",
    f"{PACKAGE}/generation/__init__.py": "",
    f"{PACKAGE}/generation/test_utils.py": '''
class GenerationTesterMixin:
    """Stand-in: the sdist does not ship tests/generation/test_utils.py. Testers of generative models inherit it
    (ModelTesterMixin checks that); mosaic-vlm's own generation tests are in tests/models/test_generation_fuyu.py."""
''',
    f"{PACKAGE}/utils/__init__.py": "",
    f"{PACKAGE}/utils/test_configuration_utils.py": """
# PreTrainedConfig's common fields, each with a non-default value (ConfigTester.check_config_arguments_init)
config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
""",
    "utils/fetch_hub_objects_for_ci.py": '''
def url_to_local_path(url, return_url_if_not_found=True):
    """Stand-in for the CI's Hub fixture cache: nothing is cached, the URL comes back unchanged."""
    return url
''',
}


class SdistUnavailable(RuntimeError):
    """The transformers sdist could not be fetched (no registry reachable, say)."""


def cache_root() -> Path:
    """Where the package is unpacked: site-packages of this environment."""
    return Path(sysconfig.get_paths()["purelib"]) / ROOT_PACKAGE


def _pip(*args: str, cwd: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SdistUnavailable(f"`{' '.join(command[2:])}` failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def _unpack_mixins(sdist: Path, target: Path) -> None:
    with tarfile.open(sdist) as archive:
        members = {Path(member.name).name: member for member in archive.getmembers() if member.isfile()}
        for name in MIXIN_FILES:
            member = members.get(name)
            if member is None or Path(member.name).parent.name != "tests":
                raise SdistUnavailable(f"{sdist.name} has no tests/{name}")
            (target / PACKAGE / name).write_bytes(archive.extractfile(member).read())


def build_id() -> str:
    """The installed transformers version and a digest of the stand-ins: a change to either rebuilds the package."""
    digest = hashlib.sha256(repr(sorted(STAND_INS.items())).encode()).hexdigest()[:12]
    return f"{transformers.__version__}+{digest}"


def _build(root: Path) -> None:
    """Fetch the sdist and write the package into a scratch folder beside `root`, then move it into place in
    one rename (a version file tells which transformers, and which stand-ins, it came from)."""
    scratch = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        for relative, text in STAND_INS.items():
            (scratch / relative).parent.mkdir(parents=True, exist_ok=True)
            (scratch / relative).write_text(text.lstrip("\n"))
        with tempfile.TemporaryDirectory() as download:
            _pip(
                "download",
                "--no-binary",
                ":all:",
                "--no-deps",
                f"transformers=={transformers.__version__}",
                "-d",
                download,
                "--quiet",
                cwd=download,
            )
            (sdist,) = Path(download).glob("transformers-*.tar.gz")
            _unpack_mixins(sdist, scratch)
        (scratch / "VERSION").write_text(build_id())
        if root.exists():  # a package of another transformers version, or older stand-ins: replaced
            shutil.rmtree(root)
        os.rename(scratch, root)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load(module: str) -> ModuleType:
    """`transformers_common_tests.<module>` (e.g. "test_modeling_common"), fetching the sdist on first use. (The
    mixin files themselves append their sibling utils/ folder to sys.path to find `fetch_hub_objects_for_ci`.)"""
    root = cache_root()
    version = root / "VERSION"
    if not version.is_file() or version.read_text() != build_id():
        _build(root)
        importlib.invalidate_caches()
    with warnings.catch_warnings():
        # the mixins mark tests with transformers' own pytest marks (flash_attn_test, ...), registered in its conftest
        warnings.filterwarnings("ignore", message="Unknown pytest.mark")
        return importlib.import_module(f"{ROOT_PACKAGE}.{PACKAGE}.{module}")


# Shared by the mixin test modules of both families.


@contextlib.contextmanager
def auto_tables_with(**entries: dict[str, str]):
    """Add model types to transformers' static `MODEL_*_MAPPING_NAMES` tables for the duration, e.g.
    `auto_tables_with(MODEL_MAPPING_NAMES={"mosaic_clip": "MosaicClipModel"})`. The mixins read these tables (by
    class name) to tell a base model from a head; classes registered with `AutoModel.register` are not in them."""
    with contextlib.ExitStack() as stack:
        for table_name, table_entries in entries.items():
            table = getattr(modeling_auto, table_name)
            for model_type, class_name in table_entries.items():
                stack.callback(table.pop, model_type)
                if model_type in table:
                    raise ValueError(f"{table_name} already holds {model_type!r}")
                table[model_type] = class_name
        yield


@contextlib.contextmanager
def local_test_images(processing_common: ModuleType, folder: Path):
    """The mixins' chat-template tests read their images from huggingface.co URLs, which this machine cannot
    reach: for the duration they read a real photo (scikit-image's coffee, saved as PNG in `folder`) instead."""
    import PIL.Image
    from skimage import data

    photo = folder / "coffee.png"
    PIL.Image.fromarray(data.coffee()).save(photo)
    images = processing_common.MODALITY_INPUT_DATA["images"]
    original_images, original_lookup = list(images), processing_common.url_to_local_path
    images[:] = [str(photo)] * len(images)
    processing_common.url_to_local_path = lambda url: str(photo) if url.endswith((".png", ".jpg")) else url
    try:
        yield
    finally:
        images[:] = original_images
        processing_common.url_to_local_path = original_lookup
