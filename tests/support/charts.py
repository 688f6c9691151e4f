"""What a chart must be: a PNG that reads back at the size the code asked for, not blank, with every text
inside the canvas and clear of every other text, and no error bar drawn for an interval of zero width."""
import itertools

import numpy as np


def check_png(path, min_width=400):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 0
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[2] in (3, 4) and image.shape[1] >= min_width and image.shape[0] >= 100
    assert np.ptp(image[..., :3]) > 0  # not blank
    # Nothing touches the edge: a text cut off by the canvas leaves ink in its outermost pixels.
    edge = np.concatenate([image[:2, :, :3].reshape(-1, 3), image[-2:, :, :3].reshape(-1, 3),
                           image[:, :2, :3].reshape(-1, 3), image[:, -2:, :3].reshape(-1, 3)])
    assert (edge == 1.0).all(), f"{path.name}: something is drawn on the canvas's edge (clipped)"
    return image


def drawn_texts(fig):
    """The non-empty texts a draw of `fig` shows: its titles, labels, legends, annotations and those tick
    labels whose ticks lie inside the view (matplotlib keeps stale labels for the others)."""
    from matplotlib.text import Text

    tick_labels, shown = set(), []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            slack = 1e-9 * max(1.0, abs(hi - lo))
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                tick_labels |= {id(tick.label1), id(tick.label2)}
                if tick.get_visible() and lo - slack <= tick.get_loc() <= hi + slack:
                    shown += [t for t in (tick.label1, tick.label2) if t.get_visible()]
    shown += [t for t in fig.findobj(Text) if id(t) not in tick_labels and t.get_visible()]
    return [t for t in shown if t.get_text().strip()]


def check_chart(fig, path, dpi: float):
    """`path` is `fig` saved at `dpi`: checks its size, its edges (`check_png`), that every text lies inside
    the canvas and overlaps no other text, and that no error bar has zero width. Returns the image."""
    from matplotlib.container import ErrorbarContainer

    image = check_png(path)
    width, height = fig.get_size_inches() * dpi
    assert image.shape[:2] == (round(height), round(width)), f"{path.name}: {image.shape[:2]}, not {height}x{width}"
    fig.set_dpi(dpi)  # measure the texts as they were drawn into the PNG
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in drawn_texts(fig)]
    for text, box in boxes:
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, \
            f"{path.name}: {text!r} at {box.bounds} leaves the {width:.0f}x{height:.0f} canvas"
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        overlap = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0), min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
        assert min(overlap) <= 1, f"{path.name}: {a!r} and {b!r} overlap"
    for container in (c for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer)):
        for bars in container.lines[2]:  # each bar a segment; its caps sit at the segment's ends
            lengths = [np.ptp(np.asarray(s), axis=0).max() for s in bars.get_segments()]
            assert all(length > 0 for length in lengths), f"{path.name}: a zero-width error bar is drawn"
    return image
