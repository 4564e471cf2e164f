"""Analysis of a finished or running search: where trials are **analysed**.

The paper's findings (Zela et al. 2018, arXiv 1807.06906) are analyses of a search, not
parts of it: how well short budgets rank configurations the way long budgets do
(Spearman correlation between budgets), which parameters matter at which budget
(fANOVA, Hutter et al. 2014), and how the best loss improves over wall-clock time.
This package reads hpbandster's ``configs.json``/``results.json`` (written by
``nas-bohb search``, by hpbandster's own ``json_result_logger``, or exported from a
``JointSearch``) and writes a report folder of Markdown, PNG plots, CSV tables and one
``summary.json``.

Modules: :mod:`.load` reads a search into typed records, :mod:`.space` decides how each
parameter is analysed, :mod:`.correlation`, :mod:`.importance` and :mod:`.trajectory`
compute, :mod:`.plots` draws, :mod:`.report` writes the folder, :mod:`.cli` is the
``nas-bohb analyze`` subcommand.
"""


class AnalysisError(Exception):
    """A source that cannot be analysed at all (missing, unreadable); the message says why."""
