"""`vstar` and `bench vstar`: V* guided visual search from the command line, with any image-text-to-text model
folder answering and a Fuyu-style, CLIP-style or detector folder scoring the search."""

import argparse
import dataclasses
import functools
import json
import os
import re
from collections import Counter
from pathlib import Path

from mosaic_vlm.families import family_of_model_type
from mosaic_vlm.processing.mosaic_processing_common import read_image_file

from .inference import add_question_arguments, add_trust_remote_code_argument
from .inputs import (
    ModelKind,
    folder_family,
    load_model_folder,
    load_transformers_folder,
    read_config_json,
    require_kind,
)
from .staging import require_writable_file, require_writable_output, save_file, staged_folder

SCORER_KINDS = ("fuyu", "clip", "detector")


def scorer_argument(text: str) -> tuple[str, Path]:
    """--scorer KIND:PATH as (kind, folder)."""
    kind, colon, path = text.partition(":")
    if not colon or kind not in SCORER_KINDS or not path:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not KIND:PATH with KIND one of {', '.join(SCORER_KINDS)} (for example clip:my-clip-folder)"
        )
    return kind, Path(path)


scorer_argument.names_path = True  # given once, like every flag that names a folder (StrictArgumentParser)


def answering_kind() -> ModelKind:
    from transformers import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    return ModelKind(
        "an image-text-to-text model", MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING, "AutoModelForImageTextToText"
    )


def clip_kind() -> ModelKind:
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    return ModelKind("a CLIP or SigLIP model", {CLIPConfig: CLIPModel, SiglipConfig: SiglipModel}, "AutoModel")


def detector_kind() -> ModelKind:
    from transformers import MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING

    return ModelKind(
        "a zero-shot object detector (OWL-ViT, OWLv2, Grounding DINO)",
        MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING,
        "AutoModelForZeroShotObjectDetection",
    )


def require_answering_folder(folder: Path, command: str, trust_remote_code: bool) -> None:
    """At the door: a mosaic-vlm Fuyu-style folder or a transformers image-text-to-text one."""
    family = family_of_model_type(read_config_json(folder)["model_type"])
    if family is None:
        require_kind(folder, answering_kind(), command, trust_remote_code)
    elif family.name != "fuyu":
        raise ValueError(
            f"{command} needs an image-text-to-text model folder (a Fuyu-style one, or any transformers "
            f"image-text-to-text model); {folder} holds a {family.title} one."
        )


def require_chat_template(folder: Path):
    """A check that the processor loaded from `folder` has a chat template (run before its model loads)."""

    def check(processor) -> None:
        if getattr(processor, "chat_template", None) is None:
            raise ValueError(
                f"The processor in {folder} has no chat template; V* asks the model through it (save a processor "
                "with a chat_template)."
            )

    return check


def load_answering_model(folder: Path, command: str, trust_remote_code: bool):
    """The (model, processor) of a folder `require_answering_folder` let in, the processor with a chat template
    (V* talks to the model through it)."""
    if family_of_model_type(read_config_json(folder)["model_type"]) is not None:
        return load_model_folder(folder, "fuyu", command, trust_remote_code)  # ours: its template is built in
    return load_transformers_folder(
        folder, answering_kind(), command, trust_remote_code, check_processor=require_chat_template(folder)
    )


def require_scorer_folder(kind: str, folder: Path, command: str, trust_remote_code: bool) -> None:
    """At the door: --scorer KIND:FOLDER names a folder of that kind."""
    where = f"{command} --scorer {kind}:"
    if kind == "fuyu":
        found = folder_family(folder)
        if found.name != "fuyu":
            raise ValueError(f"{where} needs a Fuyu-style decoder model folder; {folder} holds a {found.title} one.")
        return
    family = family_of_model_type(read_config_json(folder)["model_type"])
    scorer_kind = clip_kind() if kind == "clip" else detector_kind()
    if family is None:
        require_kind(folder, scorer_kind, where, trust_remote_code)
    elif kind != "clip" or family.name != "clip":
        raise ValueError(f"{where} needs {scorer_kind.description} folder; {folder} holds a {family.title} one.")


def load_scorer(kind: str, folder: Path, command: str, trust_remote_code: bool, max_cell: int | None):
    """The scorer --scorer KIND:PATH names: FuyuScorer on a mosaic-vlm Fuyu-style folder, ClipScorer on ours or a
    transformers CLIP / SigLIP folder, DetectorScorer on a transformers zero-shot object detector folder."""
    from mosaic_vlm.vstar import ClipScorer, DetectorScorer, FuyuScorer

    where = f"{command} --scorer {kind}:"
    if kind == "fuyu":
        return FuyuScorer(*load_model_folder(folder, "fuyu", where, trust_remote_code), max_cell=max_cell)
    if kind == "clip":
        if family_of_model_type(read_config_json(folder)["model_type"]) is not None:
            return ClipScorer(*load_model_folder(folder, "clip", where, trust_remote_code))
        return ClipScorer(*load_transformers_folder(folder, clip_kind(), where, trust_remote_code))
    from transformers import pipeline

    model, processor = load_transformers_folder(folder, detector_kind(), where, trust_remote_code)
    detector = pipeline(
        "zero-shot-object-detection",
        model=model,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
    )
    return DetectorScorer(detector)


def add_search_arguments(parser) -> None:
    """How the search is scored and run: the flags `vstar` and `bench vstar` share."""
    parser.add_argument(
        "--scorer",
        type=scorer_argument,
        default=None,
        metavar="KIND:PATH",
        help="what scores crops for the search: fuyu:FOLDER (a mosaic-vlm Fuyu-style model asked 'is there a ...?'), "
        "clip:FOLDER (ours, or a transformers CLIP or SigLIP model) or detector:FOLDER (a transformers zero-shot "
        "object detector: OWL-ViT, OWLv2, Grounding DINO); default: the answering model, if it is a mosaic-vlm "
        "Fuyu-style one",
    )
    parser.add_argument(
        "--search-model", type=Path, default=None, help="the same as --scorer fuyu:FOLDER (kept for older scripts)"
    )
    parser.add_argument(
        "--max-cell",
        type=int,
        default=None,
        help="a fuyu scorer's widest heatmap cell in pixels: larger images get more cells, each small enough for "
        "the search model to see a small target in (default: a 4x4 grid at every size)",
    )
    parser.add_argument("--min-size", type=int, default=None, help="smallest patch side in pixels (default: V*'s)")
    parser.add_argument("--conf-high", type=float, default=0.5, help="confidence that ends a search (default 0.5)")
    parser.add_argument("--conf-low", type=float, default=0.3, help="least confidence of a fallback box (default 0.3)")
    parser.add_argument("--max-calls", type=int, default=None, help="scorer calls allowed per search")
    add_trust_remote_code_argument(parser)


def scorer_spec(args: argparse.Namespace, model_folder: Path, command: str) -> tuple[str, Path] | None:
    """At the door: the scorer the flags name, its folder checked, as (kind, folder); None when the answering
    model (ours) scores its own search."""
    if args.scorer and args.search_model:
        raise ValueError("--search-model is --scorer fuyu:FOLDER; give one of them.")
    spec = args.scorer or (("fuyu", args.search_model) if args.search_model else None)
    if spec is None:
        model_type = read_config_json(model_folder)["model_type"]
        if family_of_model_type(model_type) is None:
            raise ValueError(
                f"{command} needs --scorer KIND:PATH for a {model_type!r} answering model: only a mosaic-vlm "
                f"Fuyu-style model scores its own search (give one of {', '.join(SCORER_KINDS)})."
            )
    else:
        require_scorer_folder(*spec, command, args.trust_remote_code)
    if args.max_cell is not None and spec is not None and spec[0] != "fuyu":
        raise ValueError(f"--max-cell sets FuyuScorer's heatmap cells; a {spec[0]} scorer has none (leave it out).")
    return spec


def search_config(args: argparse.Namespace):
    """The SearchConfig the flags name (checked at the door: SearchConfig refuses bad values in one error)."""
    from mosaic_vlm.vstar import SearchConfig

    return SearchConfig(
        min_size=args.min_size, conf_high=args.conf_high, conf_low=args.conf_low, max_calls=args.max_calls
    )


def scorer_for(args: argparse.Namespace, spec: tuple[str, Path] | None, model, processor, command: str):
    """The scorer `spec` names, or, for None, the answering model (ours) scoring its own search."""
    from mosaic_vlm.vstar import FuyuScorer

    if spec is None:
        return FuyuScorer(model, processor, max_cell=args.max_cell)
    return load_scorer(*spec, command, args.trust_remote_code, args.max_cell)


def scorer_input(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The scorer's folder as an input that no output may touch."""
    if args.scorer:
        return [(f"--scorer {args.scorer[0]}:", args.scorer[1])]
    return [("--search-model", args.search_model)] if args.search_model else []


def add_vstar_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "vstar",
        help="answer with V* guided visual search and save a picture of the search",
        description="Search the image for the question's targets (named by the model unless --targets is "
        "given; different targets end on different objects: one whose box another target holds is searched "
        "again with that box painted over), answer from the whole image plus crops of what was found, and save "
        "one PNG per target with the visited patches in order and the final box. The answering model is a "
        "mosaic-vlm Fuyu-style folder or any transformers image-text-to-text folder whose processor has a chat "
        "template (LLaVA, Idefics3 / SmolVLM, ...); the search is scored by --scorer.",
        epilog="examples:\n  mosaic-vlm vstar demo-output/vstar street.png 'What colour is the digit?' "
        "--scorer fuyu:demo-output/vstar-search --targets digit --output search.png\n"
        "  mosaic-vlm vstar --model my-llava street.png 'What is on the sign?' --scorer detector:my-owlv2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model_folder", type=Path, nargs="?", metavar="MODEL", help="the answering model's folder (or --model)"
    )
    add_question_arguments(parser)
    parser.add_argument("--model", type=Path, default=None, help="the answering model's folder (or give it first)")
    parser.add_argument("--targets", nargs="+", default=None, help="what to search for (default: ask the model)")
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
    add_search_arguments(parser)
    parser.set_defaults(handler=run_vstar)


def answering_folder(args: argparse.Namespace) -> Path:
    """The answering model's folder, named once: first among the arguments or as --model."""
    if (args.model_folder is None) == (args.model is None):
        raise ValueError("name the answering model once: as the first argument (MODEL IMAGE QUESTION) or --model.")
    return args.model or args.model_folder


def run_vstar(args: argparse.Namespace) -> None:
    from mosaic_vlm.vstar import draw_search, vstar_generate

    model_folder = answering_folder(args)
    if args.output.suffix.lower() != ".png":
        raise ValueError(f"--output must name a .png file, got {args.output}.")
    inputs = [("the image", args.image), ("the model", model_folder), *scorer_input(args)]
    for path in picture_paths(args.output, args.targets):
        require_writable_file(path, args.overwrite, inputs)
    require_answering_folder(model_folder, "vstar", args.trust_remote_code)
    spec, search = scorer_spec(args, model_folder, "vstar"), search_config(args)
    image = read_image_file(args.image).convert("RGB")
    model, processor = load_answering_model(model_folder, "vstar", args.trust_remote_code)
    scorer = scorer_for(args, spec, model, processor, "vstar")
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


# ------------------------------------------------------------------------------------------------- bench vstar

BENCH_TABLE_NAME, BENCH_JSON_NAME = "vstar-bench.md", "vstar-bench.json"
VSTAR_BENCH_OUTPUT = Path("vstar-bench-report")


def add_bench_vstar_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "vstar",
        help="V*Bench as released: the paper's table for a model and a scorer",
        description="Evaluate the V*Bench release in --bench-dir (direct_attributes/ and relative_position/, each "
        "image beside its annotation .json, as penghao-wu/vstar publishes it) as the paper does: each "
        "multiple-choice question is answered by the option the model finds most likely, once from the whole "
        "image and once with the crops V*'s search finds for the annotated targets. Prints the paper's table "
        "(accuracy per category and overall) and writes it as markdown and JSON (with every question's choices, "
        "boxes and scorer calls) into --output.",
        epilog="example:\n  mosaic-vlm bench vstar --bench-dir vstar_bench --model my-llava "
        "--scorer detector:my-owlv2 --output vstar-report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bench-dir", type=Path, required=True, help="the V*Bench release folder")
    parser.add_argument("--model", type=Path, required=True, help="the answering model's folder")
    # bench's own --output and --overwrite, given before or after `vstar` (SUPPRESS: unset here, bench's stand)
    parser.add_argument(
        "--output", "-o", type=Path, default=argparse.SUPPRESS, help=f"report folder (default {VSTAR_BENCH_OUTPUT})"
    )
    parser.add_argument(
        "--overwrite", action="store_true", default=argparse.SUPPRESS, help="replace --output if it is not empty"
    )
    parser.add_argument("--limit", type=int, default=None, help="at most this many questions per category")
    parser.add_argument(
        "--annotated",
        action="store_true",
        help="add a row answered with the annotated boxes as crops (the most V*'s search could give)",
    )
    add_search_arguments(parser)
    parser.set_defaults(handler=run_bench_vstar, needs_demo_extra=False)


def run_bench_vstar(args: argparse.Namespace) -> None:
    from mosaic_vlm.vstar import annotated_searches, evaluate_vstar_bench, load_vstar_bench, searched_targets
    from mosaic_vlm.vstar.vstar_bench import CATEGORIES

    if args.quick:
        raise ValueError("--quick sizes bench's own report; bench vstar runs --bench-dir's questions (see --limit).")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}.")
    output = args.output or VSTAR_BENCH_OUTPUT
    inputs = [("--bench-dir", args.bench_dir), ("--model", args.model), *scorer_input(args)]
    require_writable_output(output, args.overwrite, inputs=inputs)
    questions = first_per_category(load_vstar_bench(args.bench_dir), args.limit)
    require_answering_folder(args.model, "bench vstar", args.trust_remote_code)
    spec, search = scorer_spec(args, args.model, "bench vstar"), search_config(args)
    model, processor = load_answering_model(args.model, "bench vstar", args.trust_remote_code)
    scorer = scorer_for(args, spec, model, processor, "bench vstar")
    found, calls = searched_targets(questions, scorer, search)
    rows = {"whole image": evaluate_vstar_bench(model, processor, questions)}
    rows["V*"] = evaluate_vstar_bench(model, processor, questions, searches=found)
    if args.annotated:
        rows["annotated boxes"] = evaluate_vstar_bench(
            model, processor, questions, searches=annotated_searches(questions)
        )
    report = {
        "bench_dir": str(args.bench_dir),
        "model": str(args.model),
        "scorer": scorer_label(args),
        "search": dataclasses.asdict(search),
        "rows": {
            name: {key: row[key] for key in (*CATEGORIES, "overall", "questions") if key in row}
            for name, row in rows.items()
        },
        "scorer_calls_per_question": sum(calls) / len(calls),
        "targets_found": sum(len(found[q.image_path]) for q in questions),
        "targets": sum(len(set(q.targets)) for q in questions),
        "questions": [
            {
                "category": question.category,
                "image": question.image_path.name,
                "question": question.question,
                "options": list(question.options),
                "chosen": {name: question.options[row["chosen"][index]] for name, row in rows.items()},
                "found": [[target, list(box)] for target, box in found[question.image_path]],
                "annotated": [[target, list(box)] for target, box in zip(question.targets, question.boxes)],
                "scorer_calls": calls[index],
            }
            for index, question in enumerate(questions)
        ],
    }
    table = bench_table(report)
    print(table, end="")
    with staged_folder(output, overwrite=args.overwrite) as staging:
        (staging / BENCH_TABLE_NAME).write_text(table)
        (staging / BENCH_JSON_NAME).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{output / BENCH_TABLE_NAME}\n{output / BENCH_JSON_NAME}")


def first_per_category(questions: list, limit: int | None) -> list:
    """The first `limit` questions of each category (all with None), in order."""
    seen = Counter()
    kept = []
    for question in questions:
        seen[question.category] += 1
        if limit is None or seen[question.category] <= limit:
            kept.append(question)
    return kept


def scorer_label(args: argparse.Namespace) -> str:
    if args.scorer:
        return f"{args.scorer[0]}:{args.scorer[1]}"
    return f"fuyu:{args.search_model or args.model}"


def bench_table(report: dict) -> str:
    """The paper's table in markdown: accuracy per category and overall, a row per way of answering."""
    from mosaic_vlm.vstar.vstar_bench import CATEGORIES

    lines = [
        f"V*Bench ({report['bench_dir']}): {report['model']} answering, search scored by {report['scorer']}",
        "",
        "| answered from | " + " | ".join(CATEGORIES) + " | overall |",
        "|---|" + "---:|" * (len(CATEGORIES) + 1),
    ]
    for name, row in report["rows"].items():
        cells = [f"{100 * row[key]:.1f}%" if key in row else "-" for key in (*CATEGORIES, "overall")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{report['rows']['whole image']['questions']} questions; the search returned a box for "
        f"{report['targets_found']} of {report['targets']} targets, with {report['scorer_calls_per_question']:.1f} "
        "scorer calls per question.",
    ]
    return "\n".join(lines) + "\n"
