"""dvclive for the training stages: curves and metrics files that dvc.yaml declares."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

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
