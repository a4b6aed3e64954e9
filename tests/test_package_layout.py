"""The package's rooms, read from the installed modules: one concern each, no import cycles between them,
`modeling` and `processing` independent, remote-code files importing only from their own folder."""

import ast
import importlib
import itertools
from pathlib import Path

import pytest

ROOMS = ("modeling", "processing", "conversion", "vstar", "data", "recipes", "benchmarks", "demo", "cli")
REMOTE_CODE_ROOMS = ("modeling", "processing")  # their files are copied next to checkpoints by save_pretrained


def room_files(room: str) -> list[Path]:
    package = importlib.import_module(f"mosaic_vlm.{room}")
    return sorted(Path(package.__file__).parent.glob("*.py"))


def imported_rooms(path: Path) -> set[str]:
    """The other rooms a module imports (absolute `mosaic_vlm.<room>` imports, wherever they stand)."""
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        rooms.update(name.split(".")[1] for name in names if name.startswith("mosaic_vlm.") and name.count(".") >= 1)
    return rooms & set(ROOMS)


@pytest.fixture(scope="module")
def room_graph() -> dict[str, set[str]]:
    return {room: set().union(*(imported_rooms(path) for path in room_files(room))) - {room} for room in ROOMS}


def test_every_room_is_installed_and_holds_modules():
    for room in ROOMS:
        assert room_files(room), room


def test_modeling_and_processing_never_import_each_other(room_graph):
    assert "processing" not in room_graph["modeling"]
    assert "modeling" not in room_graph["processing"]


def test_the_rooms_import_each_other_without_cycles(room_graph):
    # a topological order exists: repeatedly remove rooms that import nothing left
    left = dict(room_graph)
    while left:
        leaves = [room for room, needs in left.items() if not needs & set(left)]
        assert leaves, f"import cycle among {sorted(left)}: {left}"
        for room in leaves:
            del left[room]


def test_remote_code_files_import_only_from_their_own_folder():
    for room in REMOTE_CODE_ROOMS:
        for path in room_files(room):
            if path.name == "__init__.py":  # never copied: it only gathers the room's names
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level > 0:
                    assert node.level == 1 and node.module, f"{path.name}: only `from .x import y` is copied"
                imported = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.level == 0:
                    imported = [node.module]
                assert not any(name.startswith("mosaic_vlm") for name in imported), f"{path.name} imports {imported}"


def test_remote_code_file_names_are_unique():
    names = [path.name for room in REMOTE_CODE_ROOMS for path in room_files(room) if path.name != "__init__.py"]
    assert len(names) == len(set(names))


def test_no_module_edits_sys_path_or_loads_code_by_file_path():
    forbidden = ("sys.path", "spec_from_file_location", "SourceFileLoader", "runpy.run_path")
    for room, path in itertools.chain.from_iterable(((room, p) for p in room_files(room)) for room in ROOMS):
        source = path.read_text()
        assert not [word for word in forbidden if word in source], f"{room}/{path.name}"


def test_each_constant_is_defined_once():
    """Fuyu's special-token strings and V*'s prompts are written in one module each."""
    literals = {
        '"|SPEAKER|"': "fuyu_special_tokens.py",
        '"|NEWLINE|"': "fuyu_special_tokens.py",
        '"<0x04>"': "fuyu_special_tokens.py",
        '"Which objects must be seen to answer: {}"': "prompts.py",
        "Additional visual information to focus on": "prompts.py",
        "Box = tuple[int, int, int, int]": "boxes.py",
    }
    for literal, home in literals.items():
        holders = [path.name for room in ROOMS for path in room_files(room) if literal in path.read_text()]
        assert holders == [home], f"{literal} is written in {holders}"


LIBRARY_ROOMS = ("modeling", "processing", "conversion", "vstar", "data")


def rooms_imported_by(room: str, path: Path) -> set[str]:
    """The other rooms a module of `room` imports, absolute (`mosaic_vlm.<room>`) or relative (`from ..x import`),
    wherever the import stands."""
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            package = ["mosaic_vlm", room][: max(0, 3 - node.level)] if node.level else []
            module = ".".join([*package, *([node.module] if node.module else [])])
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        rooms.update(name.split(".")[1] for name in names if name.startswith("mosaic_vlm.") and name.count(".") >= 1)
    return (rooms & set(ROOMS)) - {room}


def test_application_rooms_point_one_way(tmp_path):
    """demo -> recipes / benchmarks -> the library rooms: never sideways, never back up (the cli sits above all)."""
    # the reader sees every spelling of an import of another room
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from ..recipes import vstar\nfrom .. import cli\nimport mosaic_vlm.demo.main_job\nfrom . import report\n"
        "def f():\n    from mosaic_vlm.data import digits\n"
    )
    assert rooms_imported_by("benchmarks", probe) == {"recipes", "cli", "demo", "data"}
    graph = {room: set().union(*(rooms_imported_by(room, path) for path in room_files(room))) for room in ROOMS}
    assert not graph["benchmarks"] & {"recipes", "demo", "cli"}, graph["benchmarks"]
    assert not graph["recipes"] & {"benchmarks", "demo", "cli"}, graph["recipes"]
    assert "cli" not in graph["demo"], graph["demo"]
    for room in ("recipes", "benchmarks"):
        assert graph[room] <= set(LIBRARY_ROOMS), f"{room} imports {graph[room] - set(LIBRARY_ROOMS)}"
    for room in LIBRARY_ROOMS:
        assert not graph[room] & {"recipes", "benchmarks", "demo", "cli"}, f"{room} imports {graph[room]}"


def test_recipes_read_argv_in_one_place():
    """Python callers hand the recipes dataclasses; only the recipes' shared `parse_arguments` (their `main`s'
    way in) parses a command line into them."""

    def uses_the_parser(path: Path) -> bool:
        nodes = list(ast.walk(ast.parse(path.read_text())))
        names = {node.id for node in nodes if isinstance(node, ast.Name)}
        names |= {node.attr for node in nodes if isinstance(node, ast.Attribute)}
        return "HfArgumentParser" in names

    holders = [f"{room}/{path.name}" for room in ROOMS for path in room_files(room) if uses_the_parser(path)]
    assert holders == ["recipes/recipe.py"], holders


PRIVATE_TRANSFORMERS_MODULES = (
    "transformers.utils.generic",
    "transformers.utils.output_capturing",
    "transformers.cache_utils",
    "transformers.masking_utils",
    "transformers.modeling_layers",
    "transformers.modeling_rope_utils",
    "transformers.conversion_mapping",
    "transformers.core_model_loading",
)


def test_only_the_compatibility_module_imports_transformers_internals():
    """What differs between transformers releases is imported in modeling/mosaic_transformers_compat.py alone."""
    for room in ROOMS:
        for path in room_files(room):
            if path.name == "mosaic_transformers_compat.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
                    assert not set(names) & set(PRIVATE_TRANSFORMERS_MODULES), f"{room}/{path.name}: {node.module}"
                    assert "torch_compilable_check" not in names[0] + str([a.name for a in node.names]), path.name
