"""What a chart must be: a PNG that reads back, wide enough, not blank."""
import numpy as np


def check_png(path, min_width=400):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 0
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[2] in (3, 4) and image.shape[1] >= min_width and image.shape[0] >= 100
    assert np.ptp(image[..., :3]) > 0  # not blank
