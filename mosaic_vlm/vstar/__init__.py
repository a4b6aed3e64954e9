"""mosaic_vlm.vstar: V* guided visual search. Boxes and their geometry (`boxes`), the prompts (`prompts`),
scorers (`scorers`), the search (`search`), the answering loop (`generate`), pictures (`draw`) and the V*Bench
release's loader and multiple-choice evaluation (`vstar_bench`)."""

from .boxes import Box, box_iou, enlarge_box, same_object
from .draw import draw_search
from .generate import VStarOutput, separate_targets, vstar_generate
from .prompts import FOCUS_PROMPT, PRESENCE_QUESTION, TARGETS_PROMPT, focus_question, focus_text, parse_targets
from .scorers import CheckedScorer, ClipScorer, DetectorScorer, FuyuScorer, Scorer
from .search import SearchConfig, SearchResult, exhaustive_search, paint_over, visual_search
from .vstar_bench import (
    VStarBenchQuestion,
    annotated_searches,
    evaluate_vstar_bench,
    load_vstar_bench,
    option_losses,
    searched_targets,
)

__all__ = [
    "Box",
    "CheckedScorer",
    "ClipScorer",
    "DetectorScorer",
    "FOCUS_PROMPT",
    "FuyuScorer",
    "PRESENCE_QUESTION",
    "Scorer",
    "SearchConfig",
    "SearchResult",
    "TARGETS_PROMPT",
    "VStarBenchQuestion",
    "VStarOutput",
    "annotated_searches",
    "box_iou",
    "draw_search",
    "enlarge_box",
    "evaluate_vstar_bench",
    "exhaustive_search",
    "focus_question",
    "focus_text",
    "load_vstar_bench",
    "option_losses",
    "paint_over",
    "parse_targets",
    "same_object",
    "searched_targets",
    "separate_targets",
    "visual_search",
    "vstar_generate",
]
