"""`warmgraph warmup --engine vllm`, then `vllm serve` with WARMGRAPH_VLLM=1 from the warm cache."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vllm_helpers import ARGS, MAX_TOKENS, PROMPTS, run_warmup, vllm_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_warmup_then_serve_answers_from_warm_graphs(tiny_vllm_model: Path, eager_tokens: list[list[int]],
                                                    tmp_path: Path) -> None:
    # vLLM's own processes, as a server runs (the in-process engine would change vLLM's key)
    env = vllm_env(tmp_path)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING")
    warm = run_warmup(tiny_vllm_model, env)
    assert warm["mode"] == 2 and warm["pieces"] == [1, 1, 1]
    # each piece's streamed size-1 graph and its dynamic one
    assert warm["compiled"] == 6 and [g["bucket"] for g in warm["graphs"]] == [[1], [1, 16384]] * 3
    assert warm["token_ids"] == eager_tokens[0]
    assert warm["vllm_aot_dir"] and Path(warm["vllm_aot_dir"]).is_dir()

    report = tmp_path / "report.jsonl"
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_vllm_model), *ARGS,
         "--host", "127.0.0.1", "--port", str(port)],
        env={**env, "WARMGRAPH_VLLM": "1", "WARMGRAPH_VLLM_REPORT": str(report)},
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"))  # noqa: SIM115
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "vllm serve did not come up in 600 s"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                time.sleep(1)
        body = json.dumps({"model": str(tiny_vllm_model), "prompt": PROMPTS[0], "max_tokens": MAX_TOKENS,
                           "temperature": 0}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                         {"Content-Type": "application/json"})
        answer = json.load(urllib.request.urlopen(request, timeout=120))
    finally:
        server.terminate()  # stopped by its PID
        server.wait(timeout=120)
    assert answer["choices"][0]["text"] == warm["text"]
    builds = [json.loads(line) for line in report.read_text().splitlines() if '"build"' in line]
    assert builds and all(b["counters"]["compiles"] == 0 and b["counters"]["cache_hits"] == 6 for b in builds)
    log = (tmp_path / "server.log").read_text()
    assert "Directly load AOT compilation" in log and "load failure" not in log


def test_concurrent_warmups_compile_each_key_once(tiny_vllm_model: Path, eager_tokens: list[list[int]],
                                                  tmp_path: Path) -> None:
    env = vllm_env(tmp_path, WARMGRAPH_VLLM_WORKERS="1")  # in-process engines: two starts fit on 2 cores
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: run_warmup(tiny_vllm_model, env, "--sizes", "1"), range(2)))
    # three distinct pieces, each with size 1 and the dynamic graph: 6 keys, each compiled by one
    # of the two (the other waited on its lock, then loaded it)
    assert sum(r["compiled"] for r in results) == 6
    assert all(r["token_ids"] == eager_tokens[0] for r in results)
    assert len(list((tmp_path / "warmgraph" / "entries").glob("*/graph.pt2"))) == 6
