"""The synthetic cross-domain demo behind ``crossreid demo`` and ``make demo``.

Modules: :mod:`~crossreid.demo.recipe` (data size and training settings),
:mod:`~crossreid.demo.jobs` (the training runs, side by side), :mod:`~crossreid.demo.report`
(tables, summary, ranked pictures) and :mod:`~crossreid.demo.run` (the two entry points).

It shows what crossreid is for, on a machine with no dataset and no GPU:

1. two synthetic camera domains are generated (cached) through ``synthetic:`` specs:
   **A** (the labelled source: daylight, neutral colours) and **B** (the unlabelled target:
   dim indoor/night cameras with colour casts, blur and noise);
2. the same small network is trained three times from scratch, and once more from the
   adapted model:

   * ``source_only`` — on A with the source losses only (no target batches, no MMD);
   * ``adapted`` — the full cross-domain training A → B (B's labels are never read),
     evaluated with camera-wise BatchNorm statistics of B's unlabelled training images;
   * ``oracle`` — supervised on B's training labels, the upper bound;
   * ``pseudo_labels`` — ARN + pseudo-labels: the pseudo-label stage (B's training images
     clustered, never their labels) run twice from the adapted model with two seeds, and
     the average of the two runs' weights (:mod:`crossreid.models.soup`);

3. each model is evaluated on B's query/gallery (the target, what the table is about) and on
   A's query/gallery (the source);
4. a table, TensorBoard logs (one folder per run), ``ranked.png`` (the same B queries ranked
   by the source-only, the adapted and the pseudo-label model) and a JSON summary are written.

Model selection is honest: every model is the one at the *last* training step (the target
labels are used for evaluation only, never to pick a checkpoint). Every run is
single-threaded (several run side by side), so the numbers do not depend on the CPU count.

Example::

    >>> from crossreid.demo import run_demo
    >>> results = run_demo(quick=True, seed=0, output="runs/demo")   # doctest: +SKIP
    >>> results["models"]["adapted"]["mAP"]                           # doctest: +SKIP
"""

from crossreid.demo.jobs import default_jobs
from crossreid.demo.recipe import (
    ABLATION_TERMS,
    DEFAULT_RECIPE,
    MODEL_LABELS,
    QUICK_RECIPE,
    DemoRecipe,
    recipe_replace,
)
from crossreid.demo.report import format_ablation_table, format_results_table, summary_line
from crossreid.demo.run import run_ablation, run_demo

__all__ = [
    "ABLATION_TERMS",
    "DEFAULT_RECIPE",
    "MODEL_LABELS",
    "QUICK_RECIPE",
    "DemoRecipe",
    "default_jobs",
    "format_ablation_table",
    "format_results_table",
    "recipe_replace",
    "run_ablation",
    "run_demo",
    "summary_line",
]
