"""GraphRunner on the CPU backends: outputs equal eager for every real shape in every bucket,
and the counters prove what ran (N buckets: N compiles, then one replay per call)."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys

import pytest
import torch

import warmgraph
from warmgraph import BucketSet, WarmgraphError
from warmgraph.compiler.registry import detect_device, get_backend, resolve_auto
from warmgraph.errors import BucketMissError, ConfigError
from warmgraph.models.toy import MLP, CausalAttention
from warmgraph.runtime import Dims

BACKENDS = ["eager", "inductor", "aot"]
MLP_BUCKETS = [1, 2, 4, 8]
ATT_BUCKETS = BucketSet([(2, 8), (4, 16)], dims=("batch", "seq"))
ATT_DIMS = Dims(inputs=[{0: "batch", 1: "seq"}, {0: "batch"}], fill=[0, 0], outputs=[{0: "batch", 1: "seq"}])


@pytest.fixture(scope="module", params=BACKENDS)
def mlp_runner(request: pytest.FixtureRequest) -> tuple[MLP, warmgraph.GraphRunner]:
    torch.manual_seed(0)
    model = MLP().eval()
    runner = warmgraph.compile(model, buckets=MLP_BUCKETS, example_inputs=(torch.randn(8, 64),),
                               backend=request.param)
    report = runner.warmup()
    assert report.compiled == 4 and [e.bucket for e in report.entries] == [(8,), (4,), (2,), (1,)]
    return model, runner


@pytest.fixture(scope="module", params=BACKENDS)
def attention_runner(request: pytest.FixtureRequest) -> tuple[CausalAttention, warmgraph.GraphRunner]:
    torch.manual_seed(0)
    model = CausalAttention().eval()
    example = (torch.randn(2, 16, 64), torch.tensor([16, 16]))
    runner = warmgraph.compile(model, buckets=ATT_BUCKETS, example_inputs=example, backend=request.param,
                               dims=ATT_DIMS)
    assert runner.warmup().compiled == 2
    return model, runner


def test_mlp_equals_eager_for_every_shape(mlp_runner: tuple[MLP, warmgraph.GraphRunner]) -> None:
    model, runner = mlp_runner
    before = dict(runner.counters)
    for n in range(1, 9):
        x = torch.randn(n, 64)
        with torch.no_grad():
            expected = model(x)
        got = runner(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    after = runner.counters
    assert after["compiles"] == before["compiles"] == 4  # nothing compiled after warmup
    assert after["replays"] - before["replays"] == 8  # one replay per call
    assert after["recompiles"] == 0 and after["eager_fallbacks"] == before["eager_fallbacks"]
    # Padding: shapes 3, 5, 6, 7 are padded to 4, 8, 8, 8 -> (1 + 3 + 2 + 1) rows of 64.
    assert after["padded_elements"] - before["padded_elements"] == (1 + 3 + 2 + 1) * 64


def test_mlp_beyond_largest_bucket_falls_back(mlp_runner: tuple[MLP, warmgraph.GraphRunner],
                                              caplog: pytest.LogCaptureFixture) -> None:
    model, runner = mlp_runner
    before = dict(runner.counters)
    x = torch.randn(11, 64)
    with caplog.at_level(logging.WARNING, logger="warmgraph"):
        got = runner(x)
        runner(torch.randn(11, 64))
    torch.testing.assert_close(got, model(x).detach())
    assert runner.counters["eager_fallbacks"] - before["eager_fallbacks"] == 2
    assert runner.counters["replays"] == before["replays"] and runner.counters["compiles"] == 4
    assert sum("fits no bucket" in r.message for r in caplog.records) == 1  # warned once per new shape


def test_attention_padding_in_one_and_two_dimensions(
    attention_runner: tuple[CausalAttention, warmgraph.GraphRunner],
) -> None:
    model, runner = attention_runner
    before = runner.counters["replays"]
    calls = 0
    for b, s in itertools.product(range(1, 5), range(1, 17)):
        x = torch.randn(b, s, 64)
        lengths = torch.randint(1, s + 1, (b,))
        with torch.no_grad():
            expected = model(x, lengths)
        got = runner(x, lengths)
        assert got.shape == (b, s, 64)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        calls += 1
    assert runner.counters["replays"] - before == calls
    assert runner.counters["compiles"] == 2 and runner.counters["recompiles"] == 0
    assert runner.counters["eager_fallbacks"] == 0


def test_miss_policy_compile_keeps_the_new_bucket() -> None:
    model = MLP().eval()
    runner = warmgraph.compile(model, buckets=[2, 4], example_inputs=(torch.randn(4, 64),), backend="eager",
                               miss_policy="compile")
    runner.warmup()
    x = torch.randn(5, 64)
    torch.testing.assert_close(runner(x), model(x).detach())
    # vllm-gaudi's fallback rule with base step 32: ceil(5 ** (1/3)) * 32 = 64, 5 rounds up to 64.
    assert (64,) in runner.buckets and len(runner.buckets) == 3
    assert runner.counters["compiles"] == 3 and runner.counters["eager_fallbacks"] == 0
    torch.testing.assert_close(runner(torch.ones(40, 64)), model(torch.ones(40, 64)).detach())
    assert runner.counters["compiles"] == 3 and runner.counters["replays"] == 2


def test_miss_policy_error() -> None:
    runner = warmgraph.compile(MLP().eval(), buckets=[2, 4], example_inputs=(torch.randn(4, 64),),
                               backend="eager", miss_policy="error")
    with pytest.raises(BucketMissError, match=r"shape \(5,\).*largest is \(4,\)"):
        runner(torch.randn(5, 64))


def test_bad_calls_name_the_argument() -> None:
    runner = warmgraph.compile(CausalAttention().eval(), buckets=ATT_BUCKETS, dims=ATT_DIMS, backend="eager",
                               example_inputs=(torch.randn(2, 16, 64), torch.tensor([16, 16])))
    x, lengths = torch.randn(2, 8, 64), torch.tensor([8, 8])
    cases = [
        ((x,), "expected 2 arguments"),
        ((x.double(), lengths), "argument 0: expected dtype torch.float32, got torch.float64"),
        ((x, lengths.float()), "argument 1: expected dtype torch.int64"),
        ((x[0], lengths), "argument 0: expected 3 dimensions"),
        ((torch.randn(2, 8, 32), lengths), "argument 0 dimension 2: expected 64"),
        ((x, torch.tensor([8, 8, 8])), "argument 1 dimension 0 is 3 but argument 0 dimension 0 is 2"),
        ((x, [8, 8]), "argument 1: expected a tensor, got list"),
        ((torch.randn(2, 64, 8).transpose(1, 2), lengths), "argument 0 is not contiguous"),
    ]
    for args, message in cases:
        with pytest.raises(WarmgraphError, match=message.replace("(", r"\(").replace(")", r"\)")):
            runner(*args)


def test_non_tensor_arguments_are_compiled_in() -> None:
    def scaled(x: torch.Tensor, scale: float) -> torch.Tensor:
        return x * scale

    runner = warmgraph.compile(scaled, buckets=[4], example_inputs=(torch.randn(4, 3), 2.0), backend="eager")
    assert torch.equal(runner(torch.ones(3, 3), 2.0), torch.full((3, 3), 2.0))
    with pytest.raises(WarmgraphError, match=r"argument 1: expected 2\.0"):
        runner(torch.ones(3, 3), 3.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"buckets": [(1, 2)], "example_inputs": (torch.randn(1, 2),)}, "declare with dims"),
        ({"buckets": [4], "example_inputs": torch.randn(4, 2)}, "example_inputs must be a tuple"),
        ({"buckets": [4], "example_inputs": (torch.randn(4),), "dims": Dims(inputs=[{1: 0}])}, "names dimension 1"),
        ({"buckets": [4], "example_inputs": (torch.randn(4),), "dims": Dims(inputs=[{0: "seq"}])}, "'seq'"),
        ({"buckets": [4], "example_inputs": (torch.randn(4),), "backend": "tpu_graph"}, "backend 'tpu_graph'"),
        ({"buckets": [4], "example_inputs": (torch.randn(4),), "miss_policy": "retry"}, "miss policy 'retry'"),
        ({"buckets": [], "example_inputs": (torch.randn(4),)}, "at least one bucket"),
    ],
)
def test_bad_configuration(kwargs: dict, match: str) -> None:
    kwargs.setdefault("backend", "eager")
    with pytest.raises(ConfigError, match=match):
        warmgraph.compile(torch.nn.Identity(), **kwargs)


def test_warmup_progress_and_report(capsys: pytest.CaptureFixture[str]) -> None:
    runner = warmgraph.compile(MLP().eval(), buckets=[1, 2], example_inputs=(torch.randn(2, 64),), backend="eager")
    report = runner.warmup(progress=True)
    err = capsys.readouterr().err
    assert "warmup eager" in err and "2/2" in err
    assert report.to_dict()["compiled"] == 2
    again = runner.warmup()
    assert [e.source for e in again.entries] == ["ready", "ready"] and runner.counters["compiles"] == 2
    assert "2 buckets, 0 compiled" in str(again)


def test_registry_and_device_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WARMGRAPH_DEVICE", raising=False)
    assert detect_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_auto("cpu") == "aot" and resolve_auto("npu") == "acl_graph" and resolve_auto("hpu") == "hpu_graph"
    monkeypatch.setenv("WARMGRAPH_DEVICE", "cpu")
    assert get_backend("auto").name == "aot"
    assert detect_device("hpu") == "hpu"  # an explicit argument wins over the environment
    monkeypatch.setenv("WARMGRAPH_DEVICE", "tpu")
    with pytest.raises(ConfigError, match="device 'tpu' is unknown"):
        detect_device()


def test_import_warmgraph_stays_light() -> None:
    code = ("import sys, warmgraph, warmgraph.compiler, warmgraph.bucketing, warmgraph.engine, warmgraph.cli.main; "
            "bad = [m for m in ('torch', 'torch_npu', 'habana_frameworks', 'vllm') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


SCALE = 2.0


def _scaled(x: torch.Tensor) -> torch.Tensor:
    return x * SCALE  # Dynamo guards on this global's value


def test_inductor_recompile_after_warmup_is_counted_not_silent(caplog: pytest.LogCaptureFixture) -> None:
    global SCALE
    runner = warmgraph.compile(_scaled, buckets=[4], example_inputs=(torch.randn(4, 3),), backend="inductor")
    runner.warmup()
    assert torch.equal(runner(torch.ones(4, 3)), torch.full((4, 3), 2.0))
    assert runner.counters["recompiles"] == 0
    SCALE = 3.0
    try:
        with caplog.at_level(logging.WARNING, logger="warmgraph"):
            out = runner(torch.ones(4, 3))
    finally:
        SCALE = 2.0
    assert torch.equal(out, torch.full((4, 3), 3.0))  # correct answer, and...
    assert runner.counters["recompiles"] == 1  # ...counted
    assert any("recompiled after warmup" in r.message for r in caplog.records)  # ...and reported


def test_inductor_past_the_recompile_limit_runs_eagerly_and_stays_correct(caplog: pytest.LogCaptureFixture) -> None:
    global SCALE
    runner = warmgraph.compile(_scaled, buckets=[4], example_inputs=(torch.randn(4, 3),), backend="inductor")
    runner.warmup()
    try:
        with caplog.at_level(logging.WARNING, logger="warmgraph"):
            for i in range(10):  # Dynamo allows 8 compiles of one function; then it would raise on every call
                SCALE = 3.0 + i
                assert torch.equal(runner(torch.ones(4, 3)), torch.full((4, 3), SCALE))
    finally:
        SCALE = 2.0
    assert any("hit Dynamo's recompile limit" in r.message for r in caplog.records)
