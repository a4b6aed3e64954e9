"""`zero-shot` and `ask`: answers from saved models (`vstar` is in vstar.py)."""

import argparse
from pathlib import Path

from mosaic_vlm.processing.mosaic_processing_common import read_image_file

from .inputs import load_model_folder, require_model_folder


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
    """What `ask` and `vstar` share after the model: an image, a question and the answer's length."""
    parser.add_argument("image", type=Path, help="an image file")
    parser.add_argument("question", help="the question")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="longest answer in tokens (default 20)")


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
    add_question_arguments(parser)
    add_trust_remote_code_argument(parser)
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
