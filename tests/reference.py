"""Independent references shared by the tests, written from the spec's words, not from the library."""


def unit_patches(channels: int = 1, size: int = 28, patch: int = 4) -> list[int]:
    """Patch of every unit u = c·size² + r·size + col of an NCHW-flattened layer:
    (r // patch)·grid + (col // patch), patches numbered in raster order over the grid."""
    grid = size // patch
    out = []
    for u in range(channels * size * size):
        r = (u % (size * size)) // size
        col = u % size
        out.append((r // patch) * grid + (col // patch))
    return out
