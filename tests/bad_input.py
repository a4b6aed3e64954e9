"""One table of mistakes per room, a row per case: each mistake gets one clear error.

A row is a `Case`: an id, a call that makes the mistake (it gets a fresh folder for any file it needs), and
either the error it must raise (its exact type and a regex found in its message) or, where the input is now
handled, a check that the result is right. Each room's `test_bad_input_<room>.py` holds its rows and the
builders they share, and runs them with `check_case`.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[Path], object]
    error: type[Exception] | None = None  # the exact type raised; None when the input must work
    message: str = ""  # a regex found in the error's message
    check: Callable[[object], bool] | None = None  # true of what `call` returned, when it must work


def check_case(case: Case, tmp_path: Path) -> None:
    if case.error is None:
        result = case.call(tmp_path)
        assert case.check(result), result
        return
    with pytest.raises(case.error, match=case.message) as caught:
        case.call(tmp_path)
    assert type(caught.value) is case.error  # not a subclass raised deep inside
