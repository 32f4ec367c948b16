"""The accuracy-vs-stored-parameters front: one home for computing, printing and drawing it.

    pareto.py      pure numpy maths: non-dominated ranks, the front mask, 2-D hypervolume
    trials.py      the `Front` of a study (its trials, ladder points, ranks, hypervolume), its
                   rows, per-task fronts and the hypervolume history as plain numbers
    gap.py         the selection gap of a label-free objective
    table.py       the printed table, front.csv/front.json and the CSV text MLflow gets
    figure.py      the figure (matplotlib, no pyplot); references.py: the paper's points on it

Search and tracking both read the front from here; nothing here imports either.
"""
