"""PP-DocLayoutV4's outputs -> detections: quadrilateral boxes and the reading order of its two
order heads, as transformers' `PPDocLayoutV4ImageProcessor.post_process_object_detection` makes
them (transformers 5.25, docs/layout.md "PP-DocLayoutV4"), without scipy.

    quads       pred_boxes (B, Q, 10) = centre x, y and four corner offsets (+0.5) in 0..1 ->
                corners TL TR BR BL in page pixels; the box is the corners' extent
    order       successor logits > 0 are "j directly follows i" edges; the weakest edge of the first
                cycle a depth-first search meets is dropped until none is left; the undirected
                connected components of what remains are each sorted topologically, ties broken by
                a Borda count of sigmoid(relative logits) among the candidates; components are
                laid out by the mean relative-order vote of their nodes

Every tie is broken as transformers breaks it (tests/test_layout_v4.py compares the two on random
and crafted logits), because a tie decides which of two blocks is read first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .labels import LABELS
from .postprocess import Detection, PageLayout

Edge = tuple[int, int]


def quad_corners(pred_boxes: torch.Tensor) -> torch.Tensor:
    """(..., 10) centre + offsets -> (..., 4, 2) corners TL TR BR BL in 0..1 units."""
    if pred_boxes.shape[-1] != 10:
        raise ValueError("PP-DocLayoutV4 boxes have 10 numbers (a centre and four corner offsets), "
                         f"got {pred_boxes.shape[-1]}")
    offsets = pred_boxes[..., 2:].reshape(*pred_boxes.shape[:-1], 4, 2) - 0.5
    return pred_boxes[..., :2].unsqueeze(-2) + offsets


def _first_cycle(count: int, edges: dict[Edge, float]) -> list[int] | None:
    """The first cycle a depth-first search meets, starting from nodes 0, 1, ... and following
    each node's edges in their order in `edges`; as its nodes from the one the search came
    back to, or None."""
    following: list[list[int]] = [[] for _ in range(count)]
    for i, j in edges:
        following[i].append(j)
    seen = [False] * count
    on_path = [False] * count
    for root in range(count):
        if seen[root]:
            continue
        seen[root] = on_path[root] = True
        path, next_edge = [root], [0]
        while path:
            node = path[-1]
            if next_edge[-1] == len(following[node]):  # every edge of node followed: back up
                on_path[node] = False
                path.pop()
                next_edge.pop()
                continue
            target = following[node][next_edge[-1]]
            next_edge[-1] += 1
            if on_path[target]:
                return path[path.index(target):]
            if not seen[target]:
                seen[target] = on_path[target] = True
                path.append(target)
                next_edge.append(0)
    return None


def without_cycles(count: int, edges: dict[Edge, float]) -> list[Edge]:
    """Drop the weakest edge of the first cycle until there is none (the first edge of the
    cycle, walked from where it starts, on equal weights). Returns the edges left, in order."""
    edges = dict(edges)
    while (cycle := _first_cycle(count, edges)) is not None:
        ring = list(zip(cycle, cycle[1:] + cycle[:1]))
        del edges[min(ring, key=edges.__getitem__)]
    return list(edges)


def components(count: int, edges: Sequence[Edge]) -> list[list[int]]:
    """Connected components of the edges taken as undirected, each as its nodes in ascending
    order, the components in the order of their smallest node (what scipy's labelling gives)."""
    parent = list(range(count))

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for i, j in edges:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for node in range(count):
        groups.setdefault(root(node), []).append(node)
    return list(groups.values())


def _topological(count: int, edges: Sequence[Edge], scores: np.ndarray) -> list[int]:
    """Nodes 0..count-1 in an order that respects the edges (i before j). Of the nodes ready at a
    step, the one with the highest sum of scores[node, other] over the other ready nodes comes
    first (summed in float32, in the order the nodes became ready; equal sums: lower index)."""
    waiting = [0] * count
    following: list[list[int]] = [[] for _ in range(count)]
    for i, j in edges:
        following[i].append(j)
        waiting[j] += 1
    ready = [node for node in range(count) if waiting[node] == 0]
    order = []
    while ready:
        best, best_score = ready[0], None
        if len(ready) > 1:
            for node in ready:
                total = np.float32(0)
                for other in ready:
                    if other != node:
                        total = total + scores[node, other]
                if best_score is None or total > best_score or (total == best_score and node < best):
                    best, best_score = node, total
        ready.remove(best)
        order.append(best)
        for node in following[best]:
            waiting[node] -= 1
            if waiting[node] == 0:
                ready.append(node)
    placed = set(order)  # a cycle cannot be left here, but never lose a node
    return order + [node for node in range(count) if node not in placed]


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    # written so that exp never overflows: the successor head's diagonal is -1e4
    e = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def reading_order(relative: np.ndarray, successor: np.ndarray) -> np.ndarray:
    """(N, N) float32 relative and successor logits of the kept queries -> the 0-based reading
    rank of each."""
    count = successor.shape[0]
    if count <= 1:
        return np.zeros(count, dtype=np.int64)
    edges = {(i, j): float(successor[i, j])
             for i in range(count) for j in range(count) if i != j and successor[i, j] > 0}
    kept = without_cycles(count, edges)
    scores = _sigmoid(relative)
    np.fill_diagonal(scores, 0.0)
    votes = scores.sum(axis=0)  # how strongly the others come before each node

    laid_out = []
    for nodes in components(count, kept):
        if len(nodes) > 1:
            local = {node: k for k, node in enumerate(nodes)}
            inner = [(local[i], local[j]) for i, j in kept if i in local and j in local]
            nodes = [nodes[k] for k in _topological(len(nodes), inner, scores[np.ix_(nodes, nodes)])]
        laid_out.append(nodes)
    laid_out.sort(key=lambda nodes: float(np.mean(votes[nodes])))
    ranks = np.zeros(count, dtype=np.int64)
    for rank, node in enumerate(node for nodes in laid_out for node in nodes):
        ranks[node] = rank
    return ranks


def decode_v4(
    logits: torch.Tensor, pred_boxes: torch.Tensor, relative: torch.Tensor, successor: torch.Tensor,
    sizes: Sequence[tuple[int, int]], threshold: float, labels: Sequence[str] = LABELS,
    warp_params: torch.Tensor | None = None,
) -> list[PageLayout]:
    """A batch's raw V4 outputs -> per page, the detections with score >= threshold in reading
    order, each with its quad; `sizes` are the pages' (width, height), nothing is clipped. A page
    carries its `warp_params` when the model predicts them."""
    scale = torch.tensor([[w, h] for w, h in sizes], device=pred_boxes.device).to(pred_boxes.dtype)
    corners = quad_corners(pred_boxes) * scale[:, None, None, :]
    num_queries, num_labels = logits.shape[1:]
    # top-k over every (query, label) pair: one query can come back twice with two labels
    scores, flat = logits.sigmoid().flatten(1).topk(num_queries, dim=-1)
    label_ids, queries = flat % num_labels, flat // num_labels
    corners = corners.gather(1, queries[..., None, None].expand(-1, -1, 4, 2))

    pages = []
    for b, (score, label_id, quad, query) in enumerate(zip(scores, label_ids, corners, queries)):
        keep = score >= threshold
        score, label_id, quad, query = score[keep], label_id[keep], quad[keep], query[keep]
        # the order heads see the kept queries once each, in query order
        unique, inverse = torch.unique(query, return_inverse=True)
        pick = np.ix_(unique.cpu().numpy(), unique.cpu().numpy())
        ranks = reading_order(relative[b].detach().float().cpu().numpy()[pick],
                              successor[b].detach().float().cpu().numpy()[pick])
        rank, by_order = torch.as_tensor(ranks, device=score.device)[inverse].sort(stable=True)
        quad = quad[by_order]
        boxes = torch.cat([quad.amin(dim=-2), quad.amax(dim=-2)], dim=-1)
        warp = None if warp_params is None else tuple(warp_params[b].tolist())
        found = zip(score[by_order].tolist(), label_id[by_order].tolist(), boxes.tolist(), rank.tolist(), quad.tolist())
        pages.append(PageLayout(
            (Detection(labels[lab], s, tuple(box), r, tuple((x, y) for x, y in q)) for s, lab, box, r, q in found),
            warp_params=warp))
    return pages
