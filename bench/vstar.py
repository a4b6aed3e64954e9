"""The V*Bench-like set: direct answering vs `vstar_generate`, search success, and scorer calls of V*
against an exhaustive sliding-window scan at the same window size.

The questions (digit, colour, left/right) are about sklearn digits on small tiles (about 3% of the short
side) in skimage photos of at least 1024 px; see `mosaic_vlm.data.vstar_scenes`. The two models
are the tiny Fuyu-style models of `mosaic_vlm.training.vstar` (trained here with Trainer unless --model and
--search-model are given): one names the targets and answers, the other scores crops for the search
through `FuyuScorer`.

    python -m mosaic_vlm.bench.vstar [--model out/vstar --search-model out/vstar-search] [--questions 120]
        [--exhaustive 12] [--traces out/traces]
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mosaic_vlm.data.vstar_scenes import benchmark_questions
from mosaic_vlm.training.vstar import FULL_MODEL, QUICK_MODEL, QUICK_STEPS, TRAIN_STEPS, load_model, start_training
from mosaic_vlm.vstar import (
    FuyuScorer,
    SearchConfig,
    box_iou,
    draw_search,
    exhaustive_search,
    visual_search,
    vstar_generate,
)

SEARCH = SearchConfig(min_size=64, conf_high=0.65, conf_low=0.3, max_calls=100)
# heatmap cells of at most 128 px: a 31-px tile is then a dozen pixels of the search model's 48-px input
SCORER = {"max_cell": 128}
QUICK_SEARCH = SearchConfig(min_size=256, conf_high=0.65, conf_low=0.3, max_calls=40)  # smoke runs: coarse, bounded
GENERATE = {"max_new_tokens": 6, "do_sample": False}


def answer_directly(model, processor, image, question: str) -> str:
    inputs = processor(images=image, text=question)
    return processor.post_process_image_text_to_text(model.generate(**inputs, **GENERATE))[0]


def run_vstar_benchmark(
    answerer=None,
    searcher=None,
    questions: int = 120,
    exhaustive: int = 12,
    traces: Path | None = None,
    train_steps: dict | None = None,
    output_dir: Path | None = None,
    quick: bool = False,
) -> dict:
    """`answerer` and `searcher` are (model, processor) pairs; without them both are trained first, for
    `train_steps[task]` steps, into output_dir/vstar and output_dir/vstar-search. `quick` (smoke runs):
    tiny models, a few steps, coarse bounded searches. Pictures of the first searches go to `traces`."""
    if (answerer is None) != (searcher is None):
        raise ValueError(
            "run_vstar_benchmark takes both models (answerer and searcher) or neither (both are trained)."
        )
    search = QUICK_SEARCH if quick else SEARCH
    steps = QUICK_STEPS if quick else {**TRAIN_STEPS, **(train_steps or {})}
    output_dir = output_dir or Path(tempfile.mkdtemp(prefix="mosaic-vstar-"))
    model_args = QUICK_MODEL if quick else FULL_MODEL
    if answerer is None:
        answerer, searcher = start_training(output_dir, steps, model_args)()
    model, processor = answerer
    scorer = FuyuScorer(*searcher, **SCORER)
    items = benchmark_questions(questions)
    rows, started = [], time.perf_counter()
    with torch.no_grad():
        for item in tqdm(items, desc="V*Bench-like questions"):
            image = item.scene.render()
            direct = answer_directly(model, processor, image, item.question)
            evaluations_before = scorer.evaluations
            output = vstar_generate(
                model, processor, image, item.question, scorer=scorer, search_config=search, **GENERATE
            )
            hits = [
                target in output.searches
                and output.searches[target].found
                and box_iou(output.searches[target].box, box) > 0.5
                for target, box in zip(item.targets, item.target_boxes)
            ]
            rows.append(
                {
                    "kind": item.kind,
                    "direct": direct == item.answer,
                    "vstar": output.answer == item.answer,
                    "targets_named": sorted(output.targets) == sorted(item.targets),
                    "hits": hits,
                    "calls": [result.num_calls for result in output.searches.values()],
                    "evaluations": scorer.evaluations - evaluations_before,
                    "searches": len(output.searches),
                }
            )
    vstar_seconds = time.perf_counter() - started

    # the exhaustive scan on the first questions' targets, at V*'s leaf size and confidence threshold; a
    # call scores one crop or makes one heatmap, and a FuyuScorer heatmap scores one crop per cell, so both are counted
    scan_rows = []
    for index, item in enumerate(tqdm(items[:exhaustive], desc="exhaustive scans")):
        image = item.scene.render()
        for target, box in zip(item.targets, item.target_boxes):
            before = scorer.evaluations
            scan = exhaustive_search(
                image, target, scorer, window=search.min_size, conf_low=search.conf_low, batch_size=64
            )
            between = scorer.evaluations
            ours = visual_search(image, target, scorer, search)
            if traces is not None:
                traces.mkdir(parents=True, exist_ok=True)
                draw_search(image, ours).save(traces / f"search{index}-{target.replace(' ', '_')}.png")
            scan_rows.append(
                {
                    "scan_calls": scan.num_calls,
                    "scan_crops": between - before,
                    "scan_hit": scan.found and box_iou(scan.box, box) > 0.5,
                    "vstar_calls": ours.num_calls,
                    "vstar_crops": scorer.evaluations - between,
                    "vstar_hit": ours.found and box_iou(ours.box, box) > 0.5,
                }
            )

    def share(values) -> float:
        values = list(values)
        return sum(values) / len(values) if values else float("nan")

    by_kind = {
        kind: {
            "questions": sum(row["kind"] == kind for row in rows),
            "direct_accuracy": share(row["direct"] for row in rows if row["kind"] == kind),
            "vstar_accuracy": share(row["vstar"] for row in rows if row["kind"] == kind),
        }
        for kind in ("digit", "colour", "spatial")
    }
    searches = [call for row in rows for call in row["calls"]]
    vstar_calls, scan_calls = (
        share(row["vstar_calls"] for row in scan_rows),
        share(row["scan_calls"] for row in scan_rows),
    )
    vstar_crops, scan_crops = (
        share(row["vstar_crops"] for row in scan_rows),
        share(row["scan_crops"] for row in scan_rows),
    )
    cases = [
        {
            "case": "scorer calls per search (V* vs exhaustive scan)",
            "ours": vstar_calls,
            "reference": scan_calls,
            "unit": "calls",
            "ratio": scan_calls / vstar_calls,
        },
        {
            "case": "crops scored per search (V* vs exhaustive scan)",
            "ours": vstar_crops,
            "reference": scan_crops,
            "unit": "crops",
            "ratio": scan_crops / vstar_crops,
        },
    ]
    evaluations_per_search = sum(row["evaluations"] for row in rows) / max(1, sum(row["searches"] for row in rows))
    return {
        "questions": len(rows),
        "direct_accuracy": share(row["direct"] for row in rows),
        "vstar_accuracy": share(row["vstar"] for row in rows),
        "by_kind": by_kind,
        "targets_named": share(row["targets_named"] for row in rows),
        "search_success": share(hit for row in rows for hit in row["hits"]),
        "calls_per_search": statistics.mean(searches) if searches else float("nan"),
        "evaluations_per_search": evaluations_per_search,
        "exhaustive": {
            "searches": len(scan_rows),
            "scan_calls_per_search": scan_calls,
            "scan_crops_per_search": scan_crops,
            "scan_hit_rate": share(row["scan_hit"] for row in scan_rows),
            "vstar_calls_per_search": vstar_calls,
            "vstar_crops_per_search": vstar_crops,
            "vstar_hit_rate": share(row["vstar_hit"] for row in scan_rows),
        },
        "seconds_per_question": vstar_seconds / max(1, len(rows)),
        "cases": cases,
        "threads": torch.get_num_threads(),
    }


def print_result(result: dict) -> None:
    print(
        f"{result['questions']} questions: direct {result['direct_accuracy']:.1%}, V* {result['vstar_accuracy']:.1%}"
    )
    for kind, figures in result["by_kind"].items():
        print(
            f"  {kind}: {figures['questions']} questions, direct {figures['direct_accuracy']:.1%}, "
            f"V* {figures['vstar_accuracy']:.1%}"
        )
    print(
        f"targets named right {result['targets_named']:.1%}; search success (IoU > 0.5) {result['search_success']:.1%}"
    )
    print(
        f"scorer calls per search {result['calls_per_search']:.1f} "
        f"({result['evaluations_per_search']:.1f} crops scored)"
    )
    scan = result["exhaustive"]
    print(
        f"exhaustive scan on {scan['searches']} searches: {scan['scan_calls_per_search']:.0f} calls "
        f"({scan['scan_crops_per_search']:.0f} crops), hit rate {scan['scan_hit_rate']:.1%}; V* on the same: "
        f"{scan['vstar_calls_per_search']:.1f} calls ({scan['vstar_crops_per_search']:.0f} crops), "
        f"hit rate {scan['vstar_hit_rate']:.1%}"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", type=Path, default=None, help="the trained answering model (default: train one with Trainer)"
    )
    parser.add_argument(
        "--search-model", type=Path, default=None, help="the trained search model (default: train one with Trainer)"
    )
    parser.add_argument("--questions", type=int, default=120, help="benchmark questions (default 120)")
    parser.add_argument(
        "--exhaustive", type=int, default=12, help="questions whose searches are also scanned exhaustively"
    )
    parser.add_argument("--traces", type=Path, default=None, help="folder for PNG pictures of the compared searches")
    parser.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="Trainer steps for each model when training here (default: 1000 reading digits, then "
        "3000 answering; 6000 search)",
    )
    args = parser.parse_args(argv)
    if (args.model is None) != (args.search_model is None):
        parser.error("give both --model and --search-model, or neither (then both are trained)")
    answerer = load_model(args.model) if args.model else None
    searcher = load_model(args.search_model) if args.search_model else None
    steps = {"answer": args.train_steps, "search": args.train_steps} if args.train_steps else None  # digit stage: 1000
    print_result(run_vstar_benchmark(answerer, searcher, args.questions, args.exhaustive, args.traces, steps))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
