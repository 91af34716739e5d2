"""The examples in the public docstrings run and print what they say."""

import doctest

import pytest

import matcompress.archive
import matcompress.demo
import matcompress.dictionary
import matcompress.hashing
import matcompress.kmeans
import matcompress.omp
import matcompress.pruning


@pytest.mark.parametrize(
    "module",
    [
        matcompress.omp,
        matcompress.archive,
        matcompress.demo,
        matcompress.dictionary,
        matcompress.kmeans,
        matcompress.hashing,
        matcompress.pruning,
    ],
    ids=lambda m: m.__name__,
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{module.__name__} has no examples"
    assert result.failed == 0
