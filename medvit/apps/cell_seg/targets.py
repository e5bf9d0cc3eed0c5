"""Training targets derived from an instance map: the horizontal/vertical (HV) distance map of HoVer-Net.

Graham et al., "HoVer-Net: Simultaneous segmentation and classification of nuclei in multi-tissue histology
images", Medical Image Analysis 2019; definition as in ``gen_instance_hv_map`` of vqdang/hover_net
(``models/hovernet/targets.py``), which CellViT and CellVTA reuse (``cell_segmentation/datasets/pannuke.py``).

Per instance: the centre of mass (row, column) is rounded as ``int(com + 0.5)``; every pixel of the instance
gets ``x = column + 1 - com_x`` and ``y = row + 1 - com_y`` (the original indexes the columns and rows of its
bounding-box crop from 1, so the zero line lies one pixel before the rounded centre); negative values are
divided by the absolute value of the instance's minimum and positive values by its maximum, so each instance
spans [-1, 1] in each channel; background is 0. ``one_based=False`` measures from the rounded centre itself
(a symmetric variant, not what the published models were trained on).

The original loops over instances and crops each one's bounding box expanded by 2 px; the crop only sets the
origin of the coordinates, which cancels in ``column - com``, so this module computes the same values for all
instances at once from per-instance sums (``numpy.bincount``) and bounding boxes (``scipy.ndimage.find_objects``)
in O(H*W). The original skips an instance whose expanded crop is under 2 px on a side, which cannot happen
for an image of at least 3 px per side.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["hv_map"]


def hv_map(inst_map: np.ndarray, *, one_based: bool = True) -> np.ndarray:
    """Horizontal and vertical distances of every nucleus pixel to its instance's centre of mass.

    Args:
        inst_map: Instance map int ``[H, W]``, 0 = background, any positive ids (not necessarily contiguous).
        one_based: HoVer-Net's 1-based crop coordinates (default, see the module docstring).

    Returns:
        float32 ``[2, H, W]``: channel 0 the horizontal (x, along columns) map, channel 1 the vertical (y, along
        rows) map, each in [-1, 1] per instance, 0 on background.

    Raises:
        ValueError: ``inst_map`` is not 2-D or has negative ids.
    """
    inst = np.asarray(inst_map)
    if inst.ndim != 2:
        raise ValueError(f"inst_map must be 2-D [H, W], got shape {inst.shape}")
    if inst.size and int(inst.min()) < 0:
        raise ValueError("inst_map has negative ids")
    out = np.zeros((2, *inst.shape), dtype=np.float32)
    fg = inst > 0
    if not fg.any():
        return out
    # contiguous labels 1..K (sorted ids) so that bincount and find_objects index instances directly; only the
    # nucleus pixels are sorted
    rows, cols = np.nonzero(fg)
    ids, lab = np.unique(inst[rows, cols], return_inverse=True)
    lab = lab.ravel() + 1
    n = int(ids.size)
    labelled = np.zeros(inst.shape, dtype=np.int32)
    labelled[rows, cols] = lab
    count = np.bincount(lab, minlength=n + 1)[1:].astype(np.float64)
    com_r = np.bincount(lab, weights=rows, minlength=n + 1)[1:] / count
    com_c = np.bincount(lab, weights=cols, minlength=n + 1)[1:] / count
    shift = 1 if one_based else 0
    cen_r = np.floor(com_r + 0.5).astype(np.int64) - shift  # int(com + 0.5) on non-negative values
    cen_c = np.floor(com_c + 0.5).astype(np.int64) - shift
    boxes = ndimage.find_objects(labelled, max_label=n)
    lo_r = np.array([b[0].start for b in boxes]) - cen_r  # the most negative y of each instance
    hi_r = np.array([b[0].stop - 1 for b in boxes]) - cen_r
    lo_c = np.array([b[1].start for b in boxes]) - cen_c
    hi_c = np.array([b[1].stop - 1 for b in boxes]) - cen_c
    for ch, (coord, centre, lo, hi) in enumerate(((cols, cen_c, lo_c, hi_c), (rows, cen_r, lo_r, hi_r))):
        k = lab - 1
        d = (coord - centre[k]).astype(np.float32)
        neg = np.where(lo < 0, -lo, 1).astype(np.float32)  # |min| where the instance has negatives
        pos = np.where(hi > 0, hi, 1).astype(np.float32)
        out[ch, rows, cols] = np.where(d < 0, d / neg[k], d / pos[k])
    return out
