"""``rlhflab compare``: PPO vs RLOO vs GRPO (vs PPO against a learned reward model, vs offline DPO) at an equal
sample budget, on the same model, prompts, judge and seeds.

- :mod:`~rlhflab.compare.planning`: which presets, how many steps for an equal budget, which seeds and runs;
- :mod:`~rlhflab.compare.running`: one child process per run (peak memory from ``os.wait4``), finished runs reused,
  interrupted ones resumed: running the same command again continues an interrupted comparison;
- :mod:`~rlhflab.compare.heldout`: a child per finished run that measures its held-out KL and scores its evaluation
  with the comparison's judge, alike for every algorithm;
- :mod:`~rlhflab.compare.record`: ``compare.json`` and the run directories read back;
- :mod:`~rlhflab.compare.summary`, :mod:`~rlhflab.compare.plots` and :mod:`~rlhflab.compare.render`: the report
  (``compare.md``, a self-contained ``compare.html`` and PNG plots), written from files only by
  :func:`write_compare_report` on the helpers of :mod:`rlhflab.reporting`.
"""

from rlhflab.compare.planning import (
    ALGOS,
    DEFAULT_ALGOS,
    LABELS,
    Plan,
    RunSpec,
    equal_budget_steps,
    families,
    plan_compare,
    split_preset,
)
from rlhflab.compare.record import STATE_FILE, AlgoRow, RunResult, load_results, read_state
from rlhflab.compare.render import write_compare_report
from rlhflab.compare.running import child_command, run_child, run_compare, run_state
from rlhflab.compare.summary import disturbed_timings, headline

__all__ = [
    "ALGOS",
    "DEFAULT_ALGOS",
    "LABELS",
    "STATE_FILE",
    "AlgoRow",
    "Plan",
    "RunResult",
    "RunSpec",
    "child_command",
    "disturbed_timings",
    "equal_budget_steps",
    "families",
    "headline",
    "load_results",
    "plan_compare",
    "read_state",
    "run_child",
    "run_compare",
    "run_state",
    "split_preset",
    "write_compare_report",
]
