"""Packing samples into rows of at most `capacity` tokens."""
from bisect import bisect_left, insort
from typing import Sequence


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Rows of item indices, longest items first, each into the open row it fills best.

    Deterministic: ties keep index order. Open rows are kept by their free room, and rooms are integers up
    to `capacity`, so finding the best row is a bisection over at most `capacity` distinct values.
    """
    if any(length > capacity for length in lengths):
        raise ValueError(f"an item is longer than the row capacity {capacity}")
    rows: list[list[int]] = []
    rows_by_room: dict[int, list[int]] = {}  # free room -> open rows with exactly that room
    rooms: list[int] = []                    # sorted keys of rows_by_room
    for item in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        k = bisect_left(rooms, lengths[item])
        if k == len(rooms):
            row, room = len(rows), capacity
            rows.append([])
        else:
            room = rooms[k]
            row = rows_by_room[room].pop()
            if not rows_by_room[room]:
                del rows_by_room[room], rooms[k]
        rows[row].append(item)
        room -= lengths[item]
        if room > 0:
            if room not in rows_by_room:
                rows_by_room[room] = []
                insort(rooms, room)
            rows_by_room[room].append(row)
    return rows
