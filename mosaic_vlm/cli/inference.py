"""`zero-shot`, `ask` and `vstar`: answers from saved models."""

import argparse
import functools
import os
import re
from pathlib import Path

from mosaic_vlm.processing.mosaic_processing_common import read_image_file

from .inputs import load_model_folder, require_model_folder
from .staging import require_writable_file, save_file


def add_trust_remote_code_argument(parser) -> None:
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let the model folder's processor files name classes only the folder's own code provides (runs "
        "that code; without it such a folder is refused)",
    )


def add_zero_shot_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "zero-shot",
        help="rank labels for images with a CLIP-style model",
        description="Classify images zero-shot: print, per image, the labels ranked by probability.",
        epilog="example:\n  mosaic-vlm zero-shot clip-folder cat.png dog.jpg "
        "--labels 'a photo of a cat' 'a photo of a dog'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", type=Path, help="a saved MosaicClipModel folder (with its processor)")
    parser.add_argument("images", type=Path, nargs="+", help="image files")
    parser.add_argument("--labels", nargs="+", required=True, help="candidate labels (at least two)")
    parser.add_argument(
        "--template", default="{}", help="text around each label, '{}' marks the label (default: the label alone)"
    )
    add_trust_remote_code_argument(parser)
    parser.set_defaults(handler=run_zero_shot)


def run_zero_shot(args: argparse.Namespace) -> None:
    from transformers import pipeline

    require_model_folder(args.model)
    if len(args.labels) < 2:
        raise ValueError("--labels needs at least two candidate labels to rank.")
    require_label_template(args.template)
    missing = [str(image) for image in args.images if not image.is_file()]
    if missing:
        raise ValueError(f"image file(s) not found: {', '.join(missing)}")
    model, processor = load_model_folder(args.model, "clip", "zero-shot", args.trust_remote_code)
    images = [read_image_file(path).convert("RGB") for path in args.images]
    classifier = pipeline(
        "zero-shot-image-classification",
        model=model,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
    )
    for path, image in zip(args.images, images):
        print(f"{path}:")
        results = classifier(
            image,
            candidate_labels=args.labels,
            hypothesis_template=args.template,
            tokenizer_kwargs={"truncation": True},
        )
        for rank, result in enumerate(results, start=1):
            print(f"  {rank}. {result['score']:.3f}  {result['label']}")


def require_label_template(template: str) -> None:
    """A zero-shot template must hold exactly one `{}`, where each label goes, and no other field."""
    try:
        filled = template.format("\0")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"--template {template!r} is not a template with one '{{}}' for the label (write literal braces as "
            "'{{' and '}}')."
        ) from error
    if filled.count("\0") != 1:
        raise ValueError(f"--template {template!r} must hold '{{}}' once, where the label goes.")


def add_question_arguments(parser) -> None:
    """The arguments `ask` and `vstar` share: a model folder, an image, a question and the answer's length."""
    parser.add_argument("model", type=Path, help="a saved MosaicFuyuForCausalLM folder (with its processor)")
    parser.add_argument("image", type=Path, help="an image file")
    parser.add_argument("question", help="the question")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="longest answer in tokens (default 20)")
    add_trust_remote_code_argument(parser)


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
    add_question_arguments(parser)
    parser.add_argument(
        "--box", type=float, nargs=4, metavar=("Y1", "X1", "Y2", "X2"), help="a box to add to the question"
    )
    parser.add_argument("--point", type=float, nargs=2, metavar=("X", "Y"), help="a point to add to the question")
    parser.set_defaults(handler=run_ask)


def run_ask(args: argparse.Namespace) -> None:
    image = read_image_file(args.image).convert("RGB")
    model, processor = load_model_folder(args.model, "fuyu", "ask", args.trust_remote_code)
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
    add_question_arguments(parser)
    parser.add_argument("--targets", nargs="+", default=None, help="what to search for (default: ask the model)")
    parser.add_argument(
        "--search-model",
        type=Path,
        default=None,
        help="a MosaicFuyuForCausalLM folder that scores crops for the search (default: the answering model)",
    )
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        default=Path("vstar-search.png"),
        help="PNG of the search; with several targets, one file per target, NAME-0.png, NAME-1.png, ... (default "
        "vstar-search.png); written beside the target and renamed into place",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing pictures (never the image or a model's file)"
    )
    parser.add_argument(
        "--max-cell",
        type=int,
        default=None,
        help="widest heatmap cell in pixels: larger images get more cells, each small enough for "
        "the search model to see a small target in (default: a 4x4 grid at every size)",
    )
    parser.add_argument("--min-size", type=int, default=None, help="smallest patch side in pixels (default: V*'s)")
    parser.add_argument("--conf-high", type=float, default=0.5, help="confidence that ends a search (default 0.5)")
    parser.add_argument("--conf-low", type=float, default=0.3, help="least confidence of a fallback box (default 0.3)")
    parser.add_argument("--max-calls", type=int, default=None, help="scorer calls allowed per search")
    parser.set_defaults(handler=run_vstar)


def run_vstar(args: argparse.Namespace) -> None:
    from mosaic_vlm.vstar import FuyuScorer, SearchConfig, draw_search, vstar_generate

    if args.output.suffix.lower() != ".png":
        raise ValueError(f"--output must name a .png file, got {args.output}.")
    inputs = [("the image", args.image), ("the model", args.model)]
    inputs += [("--search-model", args.search_model)] if args.search_model else []
    for path in picture_paths(args.output, args.targets):
        require_writable_file(path, args.overwrite, inputs)
    image = read_image_file(args.image).convert("RGB")
    model, processor = load_model_folder(args.model, "fuyu", "vstar", args.trust_remote_code)
    searcher = (
        load_model_folder(args.search_model, "fuyu", "vstar", args.trust_remote_code)
        if args.search_model
        else (model, processor)
    )
    scorer = FuyuScorer(*searcher, max_cell=args.max_cell)
    search = SearchConfig(
        min_size=args.min_size, conf_high=args.conf_high, conf_low=args.conf_low, max_calls=args.max_calls
    )
    output = vstar_generate(
        model,
        processor,
        image,
        args.question,
        targets=args.targets,
        scorer=scorer,
        search_config=search,
        max_new_tokens=args.max_new_tokens,
        do_sample=False,
    )
    print(f"answer: {output.answer}")
    paths = picture_paths(args.output, list(output.searches))
    for path, (target, result) in zip(paths, output.searches.items()):
        where = f"box {result.box}" if result.found else "not found"
        print(f"target {target!r}: {where}, score {result.score:.2f}, {result.num_calls} scorer calls")
        crops = [(name, image.crop(box)) for name, box, _ in output.memory]
        picture = draw_search(
            image, result, question=args.question, target=target, answer=output.answer, crops=crops, config=search
        )
        save_file(path, functools.partial(picture.save, format="PNG"), overwrite=args.overwrite)
        print(f"search picture: {path}")
    if not output.searches:
        print("no target to search for: answered from the whole image")


def picture_paths(output: Path, targets: list[str] | None) -> list[Path]:
    """Where `vstar` saves its pictures: `output` for one target, NAME-0.png, NAME-1.png, ... for several. With the
    targets not known yet (the model names them), every path it may write: `output` and the numbered pictures
    already beside it."""
    if targets is not None:
        if len(targets) == 1:
            return [output]
        return [output.with_stem(f"{output.stem}-{index}") for index in range(len(targets))]
    numbered = re.compile(rf"{re.escape(output.stem)}-[0-9]+{re.escape(output.suffix)}")
    siblings = sorted(os.listdir(output.parent)) if output.parent.is_dir() else []
    return [output, *(output.parent / name for name in siblings if numbered.fullmatch(name))]
