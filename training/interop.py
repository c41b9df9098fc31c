"""Export a packed forest to Treelite, so nvForest (CPU or GPU) and Treelite's GTIL can score any forest —
also those grown by the compiled builder or renewed online, which scikit-learn's importers never see.

The exported model is what scikit-learn's Treelite importer produces for an ``IsolationForest``: leaves hold
the path length (depth + c(n)), trees are averaged, and the ``exponential_standard_ratio`` postprocessor with
``ratio_c = c(psi)`` turns the mean path length into the paper score ``2 ** (-E[h] / c(psi))``. Unlike that
importer, each split's NaN side (``default_left``) is the forest's ``nan_left``, so rows with NaN score as
they do in scikit-learn >= 1.3. Treelite stores ``ratio_c`` as float32, which moves scores by up to ~3e-8.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.forest import PackedForest, average_path_length


def to_treelite(forest: PackedForest) -> Any:
    """A ``treelite.Model`` scoring like ``forest.score`` (needs the ``treelite`` package)."""
    from treelite.model_builder import Metadata, ModelBuilder, PostProcessorFunc, TreeAnnotation

    builder = ModelBuilder(
        threshold_type="float64", leaf_output_type="float64",
        metadata=Metadata(num_feature=forest.n_features, task_type="kIsolationForest", average_tree_output=True,
                          num_target=1, num_class=[1], leaf_vector_shape=(1, 1)),
        tree_annotation=TreeAnnotation(num_tree=forest.n_trees, target_id=[0] * forest.n_trees,
                                       class_id=[0] * forest.n_trees),
        postprocessor=PostProcessorFunc(name="exponential_standard_ratio",
                                        ratio_c=float(average_path_length(forest.max_samples))),
        base_scores=[0.0],
    )
    feature, threshold, left, right = (a.tolist() for a in (forest.feature, forest.threshold, forest.left,
                                                             forest.right))
    nan_left, leaf = forest.nan_left.astype(bool).tolist(), forest.leaf_value.tolist()
    for root in forest.tree_offset[:-1].tolist():
        builder.start_tree()
        stack = [root]  # walk from the root: slot padding nodes are unreachable and must not be exported
        while stack:
            k = stack.pop()
            builder.start_node(k)
            if feature[k] < 0:
                builder.leaf(leaf[k])
            else:
                builder.numerical_test(feature[k], threshold[k], default_left=nan_left[k], opname="<=",
                                       left_child_key=left[k], right_child_key=right[k])
                stack += [right[k], left[k]]
            builder.end_node()
        builder.end_tree()
    return builder.commit()


def treelite_score(model: Any, X: np.ndarray) -> np.ndarray:
    """Paper scores of ``X`` from a Treelite model with Treelite's reference interpreter (GTIL)."""
    import treelite.gtil

    with np.errstate(over="ignore"):
        X32 = np.ascontiguousarray(X, dtype=np.float32)
    return np.asarray(treelite.gtil.predict(model, X32), dtype=np.float64).reshape(-1)
