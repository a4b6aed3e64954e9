"""The `mosaic-vlm` subcommands besides `convert`: thin layers over the library's public functions.

`train`, `bench` and `demo` run the recipes kept in the source checkout (examples/ and benchmarks/);
they say so clearly when run from an installation without them.
"""

import argparse
import importlib.util
import logging
from pathlib import Path

logger = logging.getLogger("mosaic_vlm.conversion")

CHECKOUT = Path(__file__).resolve().parent.parent


def load_checkout_module(folder: str, name: str):
    """A recipe module from the source checkout (examples/ or benchmarks/), or one clear error."""
    path = CHECKOUT / folder / f"{name}.py"
    if not path.is_file():
        raise ValueError(f"{path} is missing: this command runs the recipes of a mosaic-vlm source checkout.")
    spec = importlib.util.spec_from_file_location(f"mosaic_vlm_{folder}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_model_folder(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a saved model folder (no config.json); pass a save_pretrained folder.")
    return path


def add_zero_shot_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "zero-shot",
        help="rank labels for images with a CLIP-style model",
        description="Classify images zero-shot: print, per image, the labels ranked by probability.",
        epilog="example:\n  mosaic-vlm zero-shot clip-folder cat.png dog.jpg --labels 'a photo of a cat' 'a photo of a dog'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, help="a saved MosaicClipModel folder (with its processor)")
    parser.add_argument("images", type=Path, nargs="+", help="image files")
    parser.add_argument("--labels", nargs="+", required=True, help="candidate labels (at least two)")
    parser.add_argument(
        "--template", default="{}", help="text around each label, '{}' marks the label (default: the label alone)"
    )
    parser.set_defaults(handler=run_zero_shot)


def run_zero_shot(args: argparse.Namespace) -> None:
    from transformers import pipeline

    require_model_folder(args.model)
    if len(args.labels) < 2:
        raise ValueError("--labels needs at least two candidate labels to rank.")
    missing = [str(image) for image in args.images if not image.is_file()]
    if missing:
        raise ValueError(f"image file(s) not found: {', '.join(missing)}")
    classifier = pipeline("zero-shot-image-classification", model=str(args.model))
    for image in args.images:
        print(f"{image}:")
        results = classifier(
            str(image),
            candidate_labels=args.labels,
            hypothesis_template=args.template,
            tokenizer_kwargs={"truncation": True},
        )
        for rank, result in enumerate(results, start=1):
            print(f"  {rank}. {result['score']:.3f}  {result['label']}")


def load_fuyu_folder(folder: Path, command: str):
    """The Fuyu-style model and processor of a saved folder, or one clear error."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

    require_model_folder(folder)
    model_type = AutoConfig.from_pretrained(folder).model_type
    if model_type != "mosaic_fuyu":
        raise ValueError(f"{command} needs a Fuyu-style model folder; {folder} holds a {model_type} model.")
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def open_image(path: Path):
    import PIL.Image

    if not path.is_file():
        raise ValueError(f"image file {path} does not exist.")
    try:
        with PIL.Image.open(path) as image:
            return image.convert("RGB")
    except PIL.UnidentifiedImageError as error:
        raise ValueError(f"{path} is not an image file PIL can read.") from error


def add_ask_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "ask",
        help="answer a question about an image with a Fuyu-style model",
        description="Answer a question about one image. Boxes <box>y1, x1, y2, x2</box> and points "
        "<point>x, y</point> in the question (or given with --box / --point) are in the image's pixels; "
        "boxes and points in the answer are mapped back to the image's pixels.",
        epilog="examples:\n  mosaic-vlm ask fuyu-folder photo.png 'What digit is this?'\n"
        "  mosaic-vlm ask fuyu-folder photo.png 'What is in this region?' --box 10 20 110 220",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, help="a saved MosaicFuyuForCausalLM folder (with its processor)")
    parser.add_argument("image", type=Path, help="an image file")
    parser.add_argument("question", help="the question")
    parser.add_argument("--box", type=float, nargs=4, metavar=("Y1", "X1", "Y2", "X2"), help="a box to add to the question")
    parser.add_argument("--point", type=float, nargs=2, metavar=("X", "Y"), help="a point to add to the question")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="longest answer in tokens (default 20)")
    parser.set_defaults(handler=run_ask)


def run_ask(args: argparse.Namespace) -> None:
    image = open_image(args.image)
    model, processor = load_fuyu_folder(args.model, "ask")
    question = args.question
    if args.box:
        question += " <box>" + ", ".join(f"{v:g}" for v in args.box) + "</box>"
    if args.point:
        question += " <point>" + ", ".join(f"{v:g}" for v in args.point) + "</point>"
    inputs = processor(images=image, text=question)
    generated = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    print(processor.post_process_image_text_to_text(generated, image_sizes=[(image.height, image.width)])[0])


def add_vstar_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "vstar",
        help="answer with V* guided visual search and save a picture of the search",
        description="Search the image for the question's targets (named by the model unless --targets is "
        "given; different targets end on different objects: one whose box another target holds is searched "
        "again with that box painted over), answer from the whole image plus crops of what was found, and save "
        "one PNG per target with the visited patches in order and the final box.",
        epilog="example:\n  mosaic-vlm vstar demo-output/vstar street.png 'What colour is the digit?' "
        "--search-model demo-output/vstar-search --targets digit --output search.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, help="a saved MosaicFuyuForCausalLM folder (with its processor)")
    parser.add_argument("image", type=Path, help="an image file")
    parser.add_argument("question", help="the question")
    parser.add_argument("--targets", nargs="+", default=None, help="what to search for (default: ask the model)")
    parser.add_argument("--search-model", type=Path, default=None,
                        help="a MosaicFuyuForCausalLM folder that scores crops for the search (default: the answering model)")
    parser.add_argument("--output", "-o", type=Path, default=Path("vstar-search.png"),
                        help="PNG of the search; with several targets, one file per target (default vstar-search.png)")
    parser.add_argument("--max-cell", type=int, default=None,
                        help="widest heatmap cell in pixels: larger images get more cells, each small enough for "
                        "the search model to see a small target in (default: a 4x4 grid at every size)")
    parser.add_argument("--min-size", type=int, default=None, help="smallest patch side in pixels (default: V*'s)")
    parser.add_argument("--conf-high", type=float, default=0.5, help="confidence that ends a search (default 0.5)")
    parser.add_argument("--conf-low", type=float, default=0.3, help="least confidence of a fallback box (default 0.3)")
    parser.add_argument("--max-calls", type=int, default=None, help="scorer calls allowed per search")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="longest answer in tokens (default 20)")
    parser.set_defaults(handler=run_vstar)


def run_vstar(args: argparse.Namespace) -> None:
    from mosaic_vlm.modeling.vstar import FuyuScorer, draw_search, vstar_generate

    if args.output.suffix.lower() != ".png":
        raise ValueError(f"--output must name a .png file, got {args.output}.")
    image = open_image(args.image)
    model, processor = load_fuyu_folder(args.model, "vstar")
    searcher = load_fuyu_folder(args.search_model, "vstar") if args.search_model else (model, processor)
    scorer = FuyuScorer(*searcher, max_cell=args.max_cell)
    search = {"min_size": args.min_size, "conf_high": args.conf_high, "conf_low": args.conf_low, "max_calls": args.max_calls}
    output = vstar_generate(model, processor, image, args.question, targets=args.targets, scorer=scorer, search_kwargs=search,
                            max_new_tokens=args.max_new_tokens, do_sample=False)
    print(f"answer: {output.answer}")
    for index, (target, result) in enumerate(output.searches.items()):
        where = f"box {result.box}" if result.found else "not found"
        print(f"target {target!r}: {where}, score {result.score:.2f}, {result.num_calls} scorer calls")
        path = args.output if len(output.searches) == 1 else args.output.with_stem(f"{args.output.stem}-{index}")
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_search(image, result).save(path)
        print(f"search picture: {path}")
    if not output.searches:
        print("no target to search for: answered from the whole image")


def add_push_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "push",
        help="push a saved model folder to the Hub",
        description="Push a saved model (and its processor, if the folder has one) to the Hub with a model card.",
        epilog="example:\n  mosaic-vlm push out/clip-digits you/clip-digits --revision main",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, help="a saved model folder")
    parser.add_argument("repo_id", help="Hub repository, e.g. you/clip-digits")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.set_defaults(handler=run_push)


def run_push(args: argparse.Namespace) -> None:
    from huggingface_hub import create_branch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor

    require_model_folder(args.model)
    config = AutoConfig.from_pretrained(args.model)
    auto_class = AutoModelForCausalLM if config.model_type == "mosaic_fuyu" else AutoModel
    model = auto_class.from_pretrained(args.model)
    logger.info("pushing %s to %s", args.model, args.repo_id)
    model.push_to_hub(args.repo_id, private=args.private)
    if args.revision is not None:
        create_branch(args.repo_id, branch=args.revision, exist_ok=True)
        model.push_to_hub(args.repo_id, revision=args.revision)
    if (args.model / "processor_config.json").is_file():
        AutoProcessor.from_pretrained(args.model).push_to_hub(args.repo_id, revision=args.revision)
    logger.info("done: %s", args.repo_id)


def add_pull_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "pull",
        help="download a model repository from the Hub into a folder",
        description="Download every file of a Hub model repository (at a branch, tag or commit) into a folder.",
        epilog="example:\n  mosaic-vlm pull you/clip-digits --output clip-digits --revision v1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("repo_id", help="Hub repository, e.g. you/clip-digits")
    parser.add_argument("--output", "-o", type=Path, required=True, help="folder to download into")
    parser.add_argument("--revision", default=None, help="branch, tag or commit sha (default: main)")
    parser.set_defaults(handler=run_pull)


def run_pull(args: argparse.Namespace) -> None:
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from .cli import staged_folder

    logger.info("downloading %s", args.repo_id)
    try:
        with staged_folder(args.output) as staging:  # no partial folder if the download breaks off
            snapshot_download(args.repo_id, revision=args.revision, local_dir=staging)
    except RepositoryNotFoundError as error:
        raise ValueError(f"repository {args.repo_id!r} not found on the Hub at {constants.ENDPOINT}") from error
    except RevisionNotFoundError as error:
        raise ValueError(f"revision {args.revision!r} not found in {args.repo_id!r}") from error
    except LocalEntryNotFoundError as error:  # huggingface_hub's answer when it cannot connect
        raise OSError(f"the Hub at {constants.ENDPOINT} did not answer while pulling {args.repo_id!r}") from error
    except EntryNotFoundError as error:
        raise ValueError(f"a file of {args.repo_id!r} is missing on the Hub: {error}") from error
    except (HfHubHTTPError, httpx2.HTTPError) as error:
        raise OSError(f"pulling {args.repo_id!r} from {constants.ENDPOINT} broke off: {type(error).__name__}: {error}") from error
    logger.info("done: %s", args.output)


def add_train_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="run a Trainer recipe (clip or fuyu) on the bundled digits",
        description="Run examples/train_<recipe>.py; everything after the recipe name goes to its own parser "
        "(HfArgumentParser: every TrainingArguments flag works).",
        epilog="example:\n  mosaic-vlm train clip --output_dir out/clip --num_train_epochs 20 --learning_rate 2e-3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", choices=("clip", "fuyu"), help="which model family to train")
    parser.add_argument("recipe_args", nargs=argparse.REMAINDER, help="arguments of the recipe (see its --help)")
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> None:
    load_checkout_module("examples", f"train_{args.recipe}").main(args.recipe_args)


def add_bench_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run the side-by-side benchmarks and write the report",
        description="Run every benchmark against its transformers reference in one run; write JSON, a "
        "markdown table and a PNG bar chart of the speed ratios into --output.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", "-o", type=Path, default=Path("bench-report"), help="report folder")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke run)")
    parser.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace) -> None:
    report = load_checkout_module("benchmarks", "report")
    paths = report.write_report(args.output, quick=args.quick)
    for path in paths:
        print(path)


def add_demo_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the main job: train tiny models on real images offline and report",
        description="Train, evaluate, search and reload tiny models on images that ship in wheels; write a "
        "report with pictures into --output-dir.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output-dir", type=Path, default=Path("demo-output"), help="where models, report and PNGs go")
    parser.add_argument("--quick", action="store_true", help="every stage, with tiny amounts (a smoke run)")
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> None:
    load_checkout_module("examples", "demo").main(["--output-dir", str(args.output_dir), *(["--quick"] if args.quick else [])])
