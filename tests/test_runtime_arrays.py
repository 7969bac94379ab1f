"""runtime/arrays.py: request tensors without numpy (fast; no compiled model needed)."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.arrays import as_tensor, flat, pack, shaped
from runtime.errors import BadInput


def test_nested_lists_keep_shape_and_dtype():
    v = as_tensor([[1, 2, 3], [4, 5, 6]], "x", "int64")
    assert (v.format, v.shape, v.tolist()) == ("q", (2, 3), [[1, 2, 3], [4, 5, 6]])
    v = as_tensor([[1, 2.5]], "x", "float32")
    assert (v.format, v.tolist()) == ("f", [[1.0, 2.5]])
    assert as_tensor([[True, False]], "x", "bool").tolist() == [[True, False]]


@pytest.mark.parametrize("src, dtype", [(np.arange(6, dtype=np.int64), "int64"), (np.arange(6, dtype=np.float32), "float32")])
def test_matching_buffers_are_not_copied(src, dtype):
    src = src.reshape(2, 3)
    v = as_tensor(src, "x", dtype)
    src[0, 0] = 42
    assert v.tolist()[0][0] == 42 and v.shape == (2, 3)


@pytest.mark.parametrize("src, dtype", [
    (np.arange(6, dtype=np.int32), "int64"),
    (np.arange(6, dtype=">i8"), "int64"),          # non-native byte order
    (np.arange(6, dtype=np.float16), "float32"),   # memoryview.tolist() cannot read float16
    (np.arange(12, dtype=np.float64)[::2], "float32"),  # strided
    (np.arange(6, dtype=np.uint8), "float32"),
])
def test_other_buffers_are_converted(src, dtype):
    v = as_tensor(src.reshape(2, 3) if src.ndim == 1 and src.size == 6 else src, "x", dtype)
    np.testing.assert_array_equal(np.asarray(v), np.asarray(src, dtype=dtype).reshape(v.shape))
    assert np.asarray(v).dtype == np.dtype(dtype)


@pytest.mark.parametrize("value, dtype, message", [
    ([[1, 2], [3]], "int64", "rectangular"),
    ([[1, [2]]], "int64", "rectangular"),
    ([[1.5, 2]], "int64", "must hold integers"),
    (np.ones((2, 2)), "int64", "must hold integers"),
    ([["a", "b"]], "float32", "must hold numbers"),
    ([[None]], "float32", "must hold numbers"),
    ([[2 ** 70]], "int64", "outside int64"),
    ([[2]], "bool", "outside bool"),
    (np.array([["a"]]), "float32", "must hold numbers"),
    ([[]], "int64", "empty"),
    (np.zeros((2, 0), np.float32), "float32", "empty"),
])
def test_bad_values_are_bad_input(value, dtype, message):
    with pytest.raises(BadInput, match=message):
        as_tensor(value, "x", dtype)


def test_shaped_and_flat_views():
    raw = pack(list(range(24)), "float32")
    v = shaped(raw, "float32", (2, 3, 4))
    assert v.shape == (2, 3, 4) and list(flat(v)) == [float(i) for i in range(24)]
    assert np.asarray(v).dtype == np.float32
    assert shaped(bytes(8), "int32", (2,)).tolist() == [0, 0] and shaped(bytes(8), "int32", (2,)).readonly
