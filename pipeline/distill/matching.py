"""Matching cached teacher boxes to ground truth (pure functions on (N,4) x1,y1,x2,y2 boxes)."""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou


def match_to_gt(boxes: Tensor, gt_boxes: Tensor) -> tuple[Tensor, Tensor]:
    """For each box, the index of its best-overlapping GT box and that IoU.

    Without GT every box gets index 0 and IoU 0.
    """
    if gt_boxes.shape[0] == 0 or boxes.shape[0] == 0:
        n = boxes.shape[0]
        return (torch.zeros(n, dtype=torch.int64, device=boxes.device),
                torch.zeros(n, dtype=boxes.dtype, device=boxes.device))
    iou, idx = box_iou(boxes, gt_boxes).max(dim=1)
    return idx, iou


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of row i of ``a`` with row i of ``b``, (N,)."""
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area_a + area_b - inter).clamp(min=1e-6)


@torch.no_grad()
def teacher_better_mask(proposals: Tensor, student_boxes: Tensor, teacher_boxes: Tensor,
                        gt_boxes: Tensor, fg_iou_thresh: float = 0.5) -> Tensor:
    """(P,) bool: proposal is foreground (IoU >= fg_iou_thresh with some GT) and the teacher's
    refined box overlaps that GT more than the student's own refined box does."""
    idx, iou = match_to_gt(proposals, gt_boxes)
    if gt_boxes.shape[0] == 0:
        return torch.zeros(proposals.shape[0], dtype=torch.bool, device=proposals.device)
    gt = gt_boxes[idx]
    return (iou >= fg_iou_thresh) & (paired_iou(teacher_boxes, gt) > paired_iou(student_boxes, gt))
