"""Bucket files: vllm-gaudi's text format (products, ranges) and warmgraph YAML round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmgraph.bucketing import BucketSet
from warmgraph.bucketing.from_file import load_buckets, load_phases, parse_gaudi_text, write_yaml
from warmgraph.bucketing.limits import MAX_PLAN_BUCKETS, TooManyBucketsError
from warmgraph.errors import BucketFileError

# vllm-gaudi's sample file (extension/bucketing/bucketing_file.txt)
SAMPLE = """(1, 2048, 0)
(1, [256, 512], [0, 4, 8])
(64, 1, 1024)
(32, 1, 512)
(1, 1, range(256, 512, 32))
"""


def test_parse_sample_file() -> None:
    buckets = parse_gaudi_text(SAMPLE)
    assert buckets[0] == (1, 2048, 0)
    assert buckets[1:7] == [(1, 256, 0), (1, 256, 4), (1, 256, 8), (1, 512, 0), (1, 512, 4), (1, 512, 8)]
    # range() excludes its stop value, as Python does (the upstream docs say otherwise).
    assert [b[2] for b in buckets if b[:2] == (1, 1)] == list(range(256, 512, 32))
    assert len(buckets) == 1 + 6 + 1 + 1 + 8


def test_split_phases(tmp_path: Path) -> None:
    f = tmp_path / "b.txt"
    f.write_text("# prompts and decodes\n\n" + SAMPLE)
    prompt, decode = load_phases(f)
    assert len(prompt) == 7 and all(b[1] != 1 for b in prompt)
    assert len(decode) == 10 and all(b[1] == 1 for b in decode)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("(1, 2)\n", r"b\.txt:1: .* is not a 3-tuple"),
        ("(1, 2, 3)\n(1, 2\n", r"b\.txt:2: cannot parse"),
        ("(1, -2, 3)\n", "not an int >= 0"),
        ("(1, 'a', 3)\n", "not an int >= 0"),
        ("(1, 1, range(0, 20000))\n", "at most 10000"),
        ("(1, 1, range(a))\n", "integer arguments"),
        ("# nothing\n", "no buckets found"),
        ("__import__('os')\n", "cannot parse"),
    ],
)
def test_malformed_text_files(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "b.txt"
    f.write_text(text)
    with pytest.raises(BucketFileError, match=match):
        load_buckets(f)


@settings(max_examples=50, deadline=None)
@given(
    st.one_of(
        st.lists(st.integers(0, 10_000), min_size=1, max_size=30),
        st.lists(st.tuples(st.integers(0, 64), st.integers(0, 4096)), min_size=1, max_size=30),
    )
)
def test_yaml_round_trip(tmp_path_factory: pytest.TempPathFactory, items: list) -> None:
    path = tmp_path_factory.mktemp("rt") / "buckets.yaml"
    original = BucketSet(items)
    write_yaml(path, original, {"strategy": "test"})
    assert load_buckets(path) == original


def test_yaml_plan_phases(tmp_path: Path) -> None:
    f = tmp_path / "plan.yaml"
    f.write_text("prompt: [[1, 128, 0], [1, 256, 4]]\ndecode: [[4, 1, 64]]\n")
    assert load_phases(f) == ([(1, 128, 0), (1, 256, 4)], [(4, 1, 64)])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("buckets: [1, 2\n", "not valid YAML at line"),
        ("- 1\n- 2\n", "must be a YAML mapping"),
        ("buckets: []\n", "non-empty list"),
        ("format: other/9\nbuckets: [1]\n", "expected warmgraph-buckets/1"),
        ("buckets: [1, -4]\n", "negative"),
    ],
)
def test_malformed_yaml(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "b.yaml"
    f.write_text(text)
    with pytest.raises(BucketFileError, match=match):
        load_buckets(f)


def test_missing_and_unwritable(tmp_path: Path) -> None:
    with pytest.raises(BucketFileError, match="does not exist"):
        load_buckets(tmp_path / "nope.txt")
    with pytest.raises(BucketFileError, match="does not exist"):
        write_yaml(tmp_path / "no" / "dir.yaml", BucketSet([1]))
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_directory_and_special_paths_are_named(tmp_path: Path) -> None:
    with pytest.raises(BucketFileError, match="is a directory; give the path of a bucket file"):
        load_buckets(tmp_path)
    with pytest.raises(BucketFileError, match="is a directory"):
        load_phases(tmp_path)
    with pytest.raises(BucketFileError, match="is not a regular file"):
        load_phases("/dev/null")


def test_expansion_is_counted_before_it_is_made() -> None:
    # A range is counted, not listed (range(10**30) used to fill memory); a line's product
    # and the whole file are capped before itertools.product runs.
    with pytest.raises(BucketFileError, match="at most 10000"):
        parse_gaudi_text(f"(1, 1, range({10**30}))")
    with pytest.raises(TooManyBucketsError, match="expands to 1,000,000,000 buckets") as info:
        parse_gaudi_text("(range(1000), range(1000), range(1000))\n")
    assert info.value.cap == MAX_PLAN_BUCKETS
    line = "(range(500), range(500), 1)\n"  # 250,000 each: the second line crosses the cap
    assert len(parse_gaudi_text(line)) == MAX_PLAN_BUCKETS
    with pytest.raises(TooManyBucketsError, match="500,000 so far in the file"):
        parse_gaudi_text(line * 2)


def test_write_errors_are_bucket_file_errors(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(BucketFileError, match=f"cannot write {not_a_dir / 'b.yaml'}"):
        write_yaml(not_a_dir / "b.yaml", BucketSet([1]))
    (tmp_path / "d.yaml").mkdir()
    with pytest.raises(BucketFileError, match="cannot write"):
        write_yaml(tmp_path / "d.yaml", BucketSet([1]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.yaml", "file"]  # nothing half-written
