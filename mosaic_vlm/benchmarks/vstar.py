"""The V*Bench-like set: direct answering vs `vstar_generate`, search success, and scorer calls of V*
against an exhaustive sliding-window scan at the same window size.

The questions (digit, colour, left/right) are about sklearn digits on small tiles (about 3% of the short
side) in skimage photos of at least 1024 px; see `mosaic_vlm.data.vstar_scenes`. The benchmark takes two
trained models (folders, or loaded (model, processor) pairs), such as the tiny Fuyu-style models that
`mosaic-vlm train vstar` trains, `./dev demo` leaves in demo-output/ and `mosaic-vlm bench` trains first: one
names the targets and answers, the other scores crops for the search through `FuyuScorer`.

    python -m mosaic_vlm.benchmarks.vstar --model out/vstar --search-model out/vstar-search [--questions 120]
        [--exhaustive 12] [--traces out/traces]
"""

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoProcessor

from mosaic_vlm.data.vstar_scenes import benchmark_questions
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

# how each kind of question is named in tables and charts
KIND_NAMES = {"digit": "digit", "colour": "colour", "spatial": "left / right"}


def loaded(model) -> tuple:
    """A (model, processor) pair as given, or loaded from the folder `model` names."""
    if isinstance(model, (str, os.PathLike)):
        return AutoModelForCausalLM.from_pretrained(model).eval(), AutoProcessor.from_pretrained(model)
    return model


def answer_directly(model, processor, image, question: str) -> str:
    inputs = processor(images=image, text=question)
    return processor.post_process_image_text_to_text(model.generate(**inputs, **GENERATE))[0]


def _no_progress(done: str) -> None:
    """The default `progress` callback: tells no one."""


@torch.no_grad()
def answer_questions(
    answerer,
    searcher,
    items: list,
    search: SearchConfig,
    traces: Path | None = None,
    pictures: int = 6,
    progress: Callable[[str], None] = _no_progress,
) -> list[dict]:
    """Each question answered directly and with `vstar_generate`: one row per question. Pictures of the
    searches of the first `pictures` questions go to `traces` (with the question, the answer, the target's
    true box and the crops the answerer saw). `progress` is told of each question done."""
    model, processor = answerer
    scorer = FuyuScorer(*searcher, **SCORER)
    rows = []
    for index, item in enumerate(items):
        image = item.scene.render()
        direct = answer_directly(model, processor, image, item.question)
        evaluations_before = scorer.evaluations
        output = vstar_generate(
            model, processor, image, item.question, scorer=scorer, search_config=search, **GENERATE
        )
        truths = dict(zip(item.targets, item.target_boxes))
        hits = [
            target in output.searches
            and output.searches[target].found
            and box_iou(output.searches[target].box, box) > 0.5
            for target, box in truths.items()
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
        if traces is not None and index < pictures:
            traces.mkdir(parents=True, exist_ok=True)
            crops = [(target, image.crop(box)) for target, box, _ in output.memory]
            verdict = "correct" if output.answer == item.answer else f"wrong: the answer is {item.answer!r}"
            for target, result in output.searches.items():
                picture = draw_search(
                    image,
                    result,
                    question=item.question,
                    target=target,
                    answer=f"{output.answer!r} ({verdict})",
                    truth=truths.get(target),
                    crops=crops,
                    config=search,
                )
                picture.save(traces / f"q{index:02d}-{item.kind}-{target.replace(' ', '_')}.png")
        progress(f"{index + 1} of {len(items)} questions done")
    return rows


@torch.no_grad()
def scan_questions(
    searcher, items: list, search: SearchConfig, progress: Callable[[str], None] = _no_progress
) -> list[dict]:
    """V*'s search against the exhaustive scan on each target of `items`, at V*'s leaf size and confidence
    threshold, and against itself without calibrated stopping (`SearchConfig.confirm=False`): one row per target. A
    call scores one crop or makes one heatmap, and a FuyuScorer heatmap scores one crop per cell, so both are
    counted. Needs the search model only. `progress` is told of each question done."""
    scorer = FuyuScorer(*searcher, **SCORER)
    scan_rows = []
    for index, item in enumerate(items):
        image = item.scene.render()
        for target, box in zip(item.targets, item.target_boxes):
            before = scorer.evaluations
            scan = exhaustive_search(
                image, target, scorer, window=search.min_size, conf_low=search.conf_low, batch_size=64
            )
            between = scorer.evaluations
            ours = visual_search(image, target, scorer, search)
            after = scorer.evaluations
            trusting = visual_search(image, target, scorer, replace(search, confirm=False))  # stops unconfirmed
            scan_rows.append(
                {
                    "scan_calls": scan.num_calls,
                    "scan_crops": between - before,
                    "scan_hit": scan.found and box_iou(scan.box, box) > 0.5,
                    "vstar_calls": ours.num_calls,
                    "vstar_crops": after - between,
                    "vstar_hit": ours.found and box_iou(ours.box, box) > 0.5,
                    "unconfirmed_calls": trusting.num_calls,
                    "unconfirmed_hit": trusting.found and box_iou(trusting.box, box) > 0.5,
                    "same_box": ours.box == trusting.box,
                }
            )
        progress(f"{index + 1} of {len(items)} exhaustive scans done")
    return scan_rows


def summarise(rows: list[dict], scan_rows: list[dict]) -> dict:
    """The figures of `answer_questions`' rows and `scan_questions`' rows."""

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
        "calibrated_stopping": {
            "searches": len(scan_rows),
            "outcome_changed": share(not row["same_box"] for row in scan_rows),
            "hits_gained": sum(row["vstar_hit"] and not row["unconfirmed_hit"] for row in scan_rows),
            "hits_lost": sum(row["unconfirmed_hit"] and not row["vstar_hit"] for row in scan_rows),
            "calls_per_search": vstar_calls,
            "unconfirmed_calls_per_search": share(row["unconfirmed_calls"] for row in scan_rows),
        },
        "cases": cases,
        "threads": torch.get_num_threads(),
    }


def run_vstar_benchmark(
    answerer,
    searcher,
    questions: int = 120,
    exhaustive: int = 12,
    traces: Path | None = None,
    quick: bool = False,
    pictures: int = 6,
    progress: Callable[[str], None] = _no_progress,
) -> dict:
    """`answerer` (names targets, answers) and `searcher` (scores crops) are trained models: folders or (model,
    processor) pairs. `quick` (smoke runs): coarse bounded searches. Pictures of the searches of the first
    `pictures` questions go to `traces`. `progress` is told of each question and scan done."""
    answerer, searcher = loaded(answerer), loaded(searcher)
    search = QUICK_SEARCH if quick else SEARCH
    items = benchmark_questions(questions)
    started = time.perf_counter()
    rows = answer_questions(answerer, searcher, items, search, traces, pictures, progress)
    seconds_per_question = (time.perf_counter() - started) / max(1, len(rows))
    return {
        **summarise(rows, scan_questions(searcher, items[:exhaustive], search, progress)),
        "seconds_per_question": seconds_per_question,
    }


def accuracy_chart(result: dict, path: Path) -> Path:
    """A bar chart of direct and V* accuracy per question kind (and over all questions), saved as PNG to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [*KIND_NAMES.values(), "all"]
    direct = [result["by_kind"][kind]["direct_accuracy"] for kind in KIND_NAMES] + [result["direct_accuracy"]]
    vstar = [result["by_kind"][kind]["vstar_accuracy"] for kind in KIND_NAMES] + [result["vstar_accuracy"]]
    figure, axis = plt.subplots(figsize=(5, 3))
    positions = range(len(labels))
    for offset, values, name, colour in ((-0.2, direct, "direct", "tab:gray"), (0.2, vstar, "V*", "tab:green")):
        bars = axis.bar(
            [p + offset for p in positions], [100 * v for v in values], width=0.4, label=name, color=colour
        )
        axis.bar_label(bars, fmt="%.0f", fontsize=8)
    axis.set_xticks(list(positions), labels)
    axis.set_ylabel("answered right (%)")
    axis.set_ylim(0, 105)
    axis.set_title(f"V*Bench-like set, {result['questions']} questions", fontsize=10)
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def print_result(result: dict) -> None:
    r, scan = result, result["exhaustive"]
    print(f"{r['questions']} questions: direct {r['direct_accuracy']:.1%}, V* {r['vstar_accuracy']:.1%}")
    for kind, f in r["by_kind"].items():
        print(f"  {kind}: {f['questions']} questions, direct {f['direct_accuracy']:.1%}, V* {f['vstar_accuracy']:.1%}")
    print(f"targets named right {r['targets_named']:.1%}; search success (IoU > 0.5) {r['search_success']:.1%}")
    print(f"scorer calls per search {r['calls_per_search']:.1f} ({r['evaluations_per_search']:.1f} crops scored)")
    print(
        f"exhaustive scan on {scan['searches']} searches: {scan['scan_calls_per_search']:.0f} calls "
        f"({scan['scan_crops_per_search']:.0f} crops), hit rate {scan['scan_hit_rate']:.1%}; V* on the same: "
        f"{scan['vstar_calls_per_search']:.1f} calls ({scan['vstar_crops_per_search']:.0f} crops), hit rate "
        f"{scan['vstar_hit_rate']:.1%}"
    )
    c = r["calibrated_stopping"]
    print(
        f"calibrated stopping on {c['searches']} searches: outcome changed in {c['outcome_changed']:.1%} (hits "
        f"gained {c['hits_gained']}, lost {c['hits_lost']}); {c['calls_per_search']:.1f} calls per search against "
        f"{c['unconfirmed_calls_per_search']:.1f} without"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", type=Path, required=True, help="the trained answering model (e.g. `mosaic-vlm train vstar`'s)"
    )
    parser.add_argument("--search-model", type=Path, required=True, help="the trained search model (`--task search`)")
    parser.add_argument("--questions", type=int, default=120, help="benchmark questions (default 120)")
    parser.add_argument(
        "--exhaustive", type=int, default=12, help="questions whose searches are also scanned exhaustively"
    )
    parser.add_argument("--traces", type=Path, default=None, help="folder for PNG pictures of the compared searches")
    args = parser.parse_args(argv)
    with tqdm(total=args.questions + args.exhaustive, desc="V*Bench-like set") as bar:

        def progress(done: str) -> None:
            bar.set_postfix_str(done)
            bar.update()

        result = run_vstar_benchmark(
            args.model, args.search_model, args.questions, args.exhaustive, args.traces, progress=progress
        )
    print_result(result)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
