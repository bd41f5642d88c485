"""ptmrec.plots: figure sizes are covered with the reports; here the labels of a scatter."""
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402

from ptmrec import plots  # noqa: E402


def test_labels_of_coinciding_points_do_not_overlap(tmp_path):
    fig, ax = plots.figure(3.0)
    x, y = np.array([0.1, 0.1, 0.1, 5.0]), np.array([0.3, 0.3, 0.301, 0.3])
    ax.scatter(x, y)
    ax.set_xscale("log")
    texts = plots.label_points(ax, x, y, ["ranker", "ranker:ids", "ranker:raw", "logme"])
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in texts]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (texts[i].get_text(), texts[j].get_text())
    assert [t.get_text() for t in texts] == ["ranker", "ranker:ids", "ranker:raw", "logme"]
    assert texts[3].arrow_patch is None  # a label with room stays beside its point
