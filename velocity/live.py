"""dvclive for the training stages: curves and metrics files that dvc.yaml declares."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)


def open_live(live_dir: Path, resume: bool) -> Any:
    """A dvclive logger writing to `live_dir`. dvc.yaml declares its metrics and plots, so it writes
    no dvc.yaml of its own and makes no experiment; `resume=False` wipes an earlier run's history."""
    from dvclive import Live  # imports dvc: only when curves are wanted
    from scmrepo.exceptions import SCMError

    class RepoTolerantLive(Live):
        def _init_dvc(self) -> None:
            # dvclive 3.49 raises "Empty git repo" in a repository without a commit (a fresh
            # `git init`; cf. treeverse/dvclive#522). Writing the curve files needs no git.
            try:
                super()._init_dvc()
            except SCMError as err:
                log.debug("dvclive without git (%s)", err)

    return RepoTolerantLive(dir=str(live_dir), resume=resume, save_dvc_exp=False, dvcyaml=None, report=None)


class Curves:
    """The curves of a training run in dvclive, one row per evaluation point of the loop's history.

    The folder starts clean and a resumed run's loop replays its earlier points first, so the
    curves equal an uninterrupted run's: no step twice, none lost.
    """

    def __init__(self, live_dir: Path | None) -> None:
        self.live = open_live(live_dir, resume=False) if live_dir is not None else None

    def __call__(self, point: dict[str, float]) -> None:
        if self.live is None:
            return
        self.live.step = int(point["step"])
        for name, value in point.items():
            if name != "step" and math.isfinite(value):
                self.live.log_metric(name, value)
        self.live.make_summary()

    def member(self, member: int) -> Callable[[dict[str, float]], None]:
        """Ensemble member `member`'s points, logged beside the first network's as member_<i>/<name>."""
        return lambda point: self({name if name == "step" else f"member_{member}/{name}": value for name, value in point.items()})

    def __enter__(self) -> "Curves":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.end()
