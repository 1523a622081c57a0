"""One table of user mistakes, every one an exit code 2 and one line on stderr within seconds.

The contract (``warmgraph/cli/main.py``): a bad flag, a missing or wrong file, or a value
that cannot work prints exactly one line, ``warmgraph: error: ...``, naming the problem and
the fix; never a traceback, never a hang, never minutes of work before the refusal.

Each row of ``ROWS`` is ``pytest.param(argv, fragment, id=...)``:

- ``argv`` is the command line after ``warmgraph``. Leading ``NAME=value`` items set
  environment variables for that row, as in a shell (``VLLM_BUCKETING_FROM_FILE={dir}``).
- ``{name}`` in an item is replaced by a path from the ``paths`` fixture (files made in
  tmp_path: a directory, garbled files, a small trace, a bucket file, a populated cache, ...);
  add a path there when a new row needs one.
- ``fragment`` must appear in the error line; it names the problem (the count and cap, the
  bad value, "is a directory"), not just "error".

Rows run in-process through the real entry point (``cli_helpers.run``), with the vllm-gaudi
bucketing variables cleared, and each must finish within ``ROW_SECONDS``: several of the
mistakes here used to run for minutes or fill memory. Commands another module owns
(``warmup``, ``generate``) append their rows to ``ROWS`` the same way.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import click
import pytest
import torch
from cli_helpers import Capsys, assert_one_line_error, run

from warmgraph.graph_cache.key import make_key
from warmgraph.graph_cache.store import GraphCache

# Generous for a busy 2-core machine: a refusal takes milliseconds; the defects took minutes.
ROW_SECONDS = 10.0

PLAN = ["--max-num-seqs", "128", "--max-num-batched-tokens", "2048", "--max-model-len", "4096", "--num-blocks", "2000"]
BIG_PLAN = ["--max-num-seqs", "256", "--max-num-batched-tokens", "8192", "--num-blocks", "4127"]
RANGE = ["buckets", "range"]
FIT = ["buckets", "fit", "--trace", "{trace}", "--max", "8192"]
SIM = ["buckets", "simulate", "--trace", "{trace}"]
CAPTURE = ["buckets", "capture", "--max-num-seqs", "4", "--max-num-batched-tokens", "8"]


ROWS = [
    # -- buckets range: caps, bad numbers, bad types ------------------------------------------
    pytest.param([*RANGE, "linear", "--min", "1", "--step", "1", "--max", "100000000000"],
                 "would make 100,000,000,000 bucket values, above the cap of 100,000", id="range-linear-huge-max"),
    pytest.param([*RANGE, "exponential", "--min", "1", "--step", "1", "--max", "100000", "--limit", "100000000"],
                 "would make up to 100,000,000 bucket values", id="range-exponential-huge-limit"),
    pytest.param([*RANGE, "padding_aware", "--min", "1", "--step", "1", "--max", "1000000000", "--pad-percent", "0"],
                 "would make at least 100,001 bucket values", id="range-padding-aware-dense"),
    pytest.param([*RANGE, "exponential", "--min", "1", "--step", "1", "--max", "1" + "0" * 24, "--limit", "3"],
                 "max is 1000000000000000000000000; sizes must be at most 2**53", id="range-max-beyond-2-53"),
    pytest.param([*RANGE, "linear", "--min", "1", "--step", "0", "--max", "10"],
                 "step is 0; use a step of at least 1", id="range-step-zero"),
    pytest.param([*RANGE, "linear", "--min", "1", "--step", "-5", "--max", "10"],
                 "step is -5; use a step of at least 1", id="range-step-negative"),
    pytest.param([*RANGE, "linear", "--min", "-1", "--step", "1", "--max", "10"], "min is -1", id="range-min-negative"),
    pytest.param([*RANGE, "linear", "--min", "9", "--step", "1", "--max", "2"], "min 9 is greater than max 2",
                 id="range-min-above-max"),
    pytest.param([*RANGE, "padding_aware", "--min", "1", "--step", "1", "--max", "100", "--pad-percent", "80"],
                 "pad_percent is 80.0; use a value from 0 to 50", id="range-pad-percent-high"),
    pytest.param([*RANGE, "padding_aware", "--min", "1", "--step", "1", "--max", "100", "--pad-percent", "nan"],
                 "pad_percent is nan", id="range-pad-percent-nan"),
    pytest.param([*RANGE, "padding_aware", "--min", "1", "--step", "1", "--max", "100", "--pad-max", "-3"],
                 "pad_max is -3", id="range-pad-max-negative"),
    pytest.param([*RANGE, "linear", "--min", "1.5", "--step", "1", "--max", "10"], "'1.5' is not a valid integer",
                 id="range-min-not-int"),
    pytest.param([*RANGE, "exponential", "--min", "1", "--step", "1", "--max", "9"], "needs --limit",
                 id="range-exponential-no-limit"),
    pytest.param([*RANGE, "cubic", "--min", "1", "--step", "1", "--max", "2"], "'cubic' is not one of",
                 id="range-unknown-strategy"),
    # -- buckets plan: caps, limits, files, environment ----------------------------------------
    pytest.param(["buckets", "plan", "--strategy", "linear", *BIG_PLAN, "--max-model-len", "100000000"],
                 "prompt ctx_blocks range [0, 1, 781249] would make 781,250 bucket values", id="plan-linear-huge-len"),
    pytest.param(["buckets", "plan", "--strategy", "linear", "--max-num-seqs", "256", "--max-num-batched-tokens",
                  "16384", "--max-model-len", "131072", "--num-blocks", "40000", "--max-num-prefill-seqs", "2"],
                 "would make 262,144 candidate prompt buckets, above the cap of 250,000 per phase",
                 id="plan-linear-crossed-cap"),
    pytest.param(["buckets", "plan", "--strategy", "linear", "--max-num-seqs", "100000000",
                  "--max-num-batched-tokens", "8192", "--max-model-len", "4096", "--num-blocks", "4000"],
                 "decode batch range [1, 32, 100000000] would make 3,125,005", id="plan-linear-huge-seqs"),
    pytest.param(["buckets", "plan", *BIG_PLAN, "--max-model-len", "1" + "0" * 20],
                 "--max-model-len must be at most 2**53", id="plan-len-beyond-2-53"),
    pytest.param(["buckets", "plan", *PLAN, "--block-size", "0"], "block_size is 0", id="plan-block-size-zero"),
    pytest.param(["buckets", "plan", *PLAN, "--block-size", "8192"], "max_num_batched_tokens 2048 is below block_size",
                 id="plan-block-size-above-budget"),
    pytest.param(["buckets", "plan", "--strategy", "linear", "--max-num-seqs", "4", "--max-num-batched-tokens", "2048",
                  "--max-model-len", "64", "--num-blocks", "100"],
                 "max_model_len 64 is below the smallest prompt query length 128", id="plan-linear-len-below-query"),
    pytest.param(["buckets", "plan", "--strategy", "exponential", "--max-num-seqs", "4", "--max-num-batched-tokens",
                  "2048", "--max-model-len", "64", "--num-blocks", "100"], "generated 0 prompt buckets",
                 id="plan-no-prompt-buckets"),
    pytest.param(["buckets", "plan", *PLAN, "--max-num-prefill-seqs", "0"], "max_num_prefill_seqs is 0",
                 id="plan-prefill-seqs-zero"),
    pytest.param(["buckets", "plan", "--strategy", "file", "--file", "{dir}", *PLAN],
                 "bucket file {dir} is a directory", id="plan-file-directory"),
    pytest.param(["VLLM_BUCKETING_FROM_FILE={dir}", "buckets", "plan", *PLAN],
                 "VLLM_BUCKETING_FROM_FILE: bucket file {dir} is a directory", id="plan-env-file-directory"),
    pytest.param(["buckets", "plan", "--strategy", "file", "--file", "{missing}", *PLAN], "does not exist",
                 id="plan-file-missing"),
    pytest.param(["buckets", "plan", "--strategy", "file", "--file", "{cube}", *PLAN],
                 "expands to 1,000,000,000 buckets", id="plan-file-product-cap"),
    pytest.param(["buckets", "plan", "--strategy", "file", "--file", "{garbled_txt}", *PLAN], "cannot parse",
                 id="plan-file-garbled"),
    pytest.param(["buckets", "plan", "--strategy", "file", "--file", "{bad_yaml}", *PLAN], "is not valid YAML",
                 id="plan-file-bad-yaml"),
    pytest.param(["buckets", "plan", "--strategy", "file", "--file", "{binary_txt}", *PLAN], "give a UTF-8 text file",
                 id="plan-file-binary"),
    pytest.param(["buckets", "plan", "--strategy", "linear", "--file", "{buckets_txt}", *PLAN],
                 "--file is used only with --strategy file", id="plan-file-with-other-strategy"),
    pytest.param(["buckets", "plan", "--strategy", "magic", *PLAN], "'magic' is not one of",
                 id="plan-unknown-strategy"),
    pytest.param(["buckets", "plan", "--max-num-seqs", "4"], "Missing option", id="plan-missing-limits"),
    pytest.param(["VLLM_BUCKETING_STRATEGY=cubic", "buckets", "plan", *PLAN],
                 "VLLM_BUCKETING_STRATEGY=cubic is unknown", id="plan-env-unknown-strategy"),
    pytest.param(["VLLM_PROMPT_CTX_BUCKET_STEP=0", "buckets", "plan", "--strategy", "linear", *PLAN],
                 "prompt ctx_blocks range [0, 0, 31]: linear: step is 0", id="plan-env-step-zero"),
    pytest.param(["VLLM_DECODE_BS_BUCKET_STEP=abc", "buckets", "plan", "--strategy", "linear", *PLAN],
                 "VLLM_DECODE_BS_BUCKET_STEP=abc is not an integer", id="plan-env-not-int"),
    # -- buckets fit -------------------------------------------------------------------------
    pytest.param(FIT, "give exactly one budget", id="fit-no-budget"),
    pytest.param([*FIT, "--max-buckets", "0"], "max_buckets is 0", id="fit-zero-budget"),
    pytest.param([*FIT, "--max-waste", "-0.5"], "max_waste is -0.5", id="fit-negative-waste"),
    pytest.param([*FIT, "--max-waste", "0"], "max_waste 0.0 is below", id="fit-unreachable-waste"),
    pytest.param(["buckets", "fit", "--trace", "{trace}", "--max", "1" + "0" * 23, "--max-buckets", "3"],
                 "sizes must be at most 2**53", id="fit-max-beyond-2-53"),
    pytest.param([*FIT, "--step", "0", "--max-buckets", "3"], "step is 0", id="fit-step-zero"),
    pytest.param([*FIT, "--max-buckets", "3", "--column", "Nope"], "has no column 'Nope'", id="fit-unknown-column"),
    pytest.param(["buckets", "fit", "--trace", "{dir}", "--max", "8192", "--max-buckets", "3"], "is a directory",
                 id="fit-trace-directory"),
    pytest.param(["buckets", "fit", "--trace", "{missing_csv}", "--max", "8192", "--max-buckets", "3"],
                 "does not exist", id="fit-trace-missing"),
    pytest.param(["buckets", "fit", "--trace", "{binary_csv}", "--max", "8192", "--max-buckets", "3"],
                 "is not UTF-8 text", id="fit-trace-binary"),
    pytest.param(["buckets", "fit", "--trace", "{empty_csv}", "--max", "8192", "--max-buckets", "3"], "is empty",
                 id="fit-trace-empty"),
    pytest.param(["buckets", "fit", "--trace", "{negative_csv}", "--max", "8192", "--max-buckets", "3"],
                 "value '-5' is negative", id="fit-trace-negative"),
    pytest.param(["buckets", "fit", "--trace", "{garbled_txt}", "--max", "8192", "--max-buckets", "3"],
                 "unsupported extension '.txt'", id="fit-trace-extension"),
    pytest.param([*FIT, "--max-buckets", "3", "--out", "{missing_dir}/fit.yaml"], "does not exist",
                 id="fit-out-missing-dir"),
    pytest.param([*FIT, "--max-buckets", "3", "--out", "{dir}"], "is a directory", id="fit-out-directory"),
    # -- buckets capture ---------------------------------------------------------------------
    pytest.param(["buckets", "capture", "--max-num-seqs", "0", "--max-num-batched-tokens", "8"], "max_num_seqs is 0",
                 id="capture-zero-seqs"),
    pytest.param([*CAPTURE, "--num-speculative-tokens", "-1"], "num_speculative_tokens is -1",
                 id="capture-negative-spec"),
    pytest.param([*CAPTURE, "--num-layers", "3000"], "cannot hold one size of 3001 graphs",
                 id="capture-too-many-layers"),
    pytest.param([*CAPTURE, "--num-layers", "3", "--graph-budget", "0"], "graph_budget is 0", id="capture-zero-budget"),
    pytest.param([*CAPTURE, "--trace", "{trace}"], "give --num-layers N with it", id="capture-trace-without-layers"),
    pytest.param([*CAPTURE, "--num-layers", "3", "--trace", "{missing_csv}"], "does not exist",
                 id="capture-trace-missing"),
    # -- buckets simulate --------------------------------------------------------------------
    pytest.param([*SIM, "--limit", "5", "--step", "0"], "--step is 0", id="simulate-step-zero"),
    pytest.param([*SIM, "--limit", "0"], "--limit is 0", id="simulate-limit-zero"),
    pytest.param([*SIM, "--strategy", "fitted", "--max-buckets", "0"], "--max-buckets is 0",
                 id="simulate-max-buckets-zero"),
    pytest.param([*SIM, "--limit", "100000000"], "would make up to 100,000,000 bucket values",
                 id="simulate-huge-limit"),
    pytest.param([*SIM, "--strategy", "linear", "--step", "1", "--max", "100000000000"],
                 "would make 100,000,000,000 bucket values", id="simulate-linear-huge-max"),
    pytest.param([*SIM, "--limit", "5", "--max", "0"], "min 128 is greater than max 0", id="simulate-max-zero"),
    pytest.param([*SIM, "--strategy", "fitted"], "needs a budget", id="simulate-fitted-no-budget"),
    pytest.param([*SIM, "--limit", "5", "--plot", "{dir}/plot.txt"], "is not an image type",
                 id="simulate-plot-not-image"),
    pytest.param([*SIM, "--limit", "5", "--plot", "{missing_dir}/plot.png"], "does not exist",
                 id="simulate-plot-missing-dir"),
    pytest.param([*SIM, "--limit", "5", "--file", "{buckets_txt}"], "is used only with --strategy file",
                 id="simulate-file-without-strategy"),
    pytest.param([*SIM, "--strategy", "file"], "pass --file", id="simulate-file-missing-option"),
    pytest.param([*SIM, "--strategy", "file", "--file", "{dir}"], "is a directory", id="simulate-file-directory"),
    pytest.param([*SIM, "--strategy", "file", "--file", "{buckets_txt}"], "holds 3-D buckets",
                 id="simulate-file-3d-for-prompt"),
    pytest.param([*SIM, "--limit", "4", "--compare", "magic"], "unknown strategies", id="simulate-compare-unknown"),
    pytest.param([*SIM, "--limit", "4", "--column", "ContextTokens,GeneratedTokens"], "takes one --column",
                 id="simulate-two-columns"),
    pytest.param([*SIM, "--limit", "4", "--column", "Nope"], "has no column 'Nope'", id="simulate-unknown-column"),
    pytest.param(["buckets", "simulate", "--trace", "{missing_csv}", "--limit", "5"], "does not exist",
                 id="simulate-trace-missing"),
    pytest.param([*SIM, "--decode", "--max-num-seqs", "0"], "max_num_seqs is 0", id="simulate-decode-zero-seqs"),
    pytest.param([*SIM, "--decode", "--max-model-len", "10"], "no decode steps", id="simulate-decode-no-steps"),
    pytest.param([*SIM, "--decode", "--strategy", "linear", "--max-model-len", "100000000"],
                 "would make 781,250 bucket values", id="simulate-decode-linear-huge-len"),
    pytest.param([*SIM, "--decode", "--strategy", "fitted"], "need a budget", id="simulate-decode-fitted-no-budget"),
    # -- cache -------------------------------------------------------------------------------
    pytest.param(["cache", "ls", "--dir", "{file}"], "is a file", id="cache-ls-root-is-file"),
    pytest.param(["cache", "du", "--dir", "{file}"], "is a file", id="cache-du-root-is-file"),
    pytest.param(["cache", "verify", "--dir", "{file}"], "is a file", id="cache-verify-root-is-file"),
    pytest.param(["cache", "ls", "--dir", "{unsafe}"], "chmod go-w", id="cache-ls-unsafe-root"),
    pytest.param(["cache", "show", "", "--dir", "{cache}"], "KEY is empty", id="cache-show-empty-key"),
    pytest.param(["cache", "show", "abc", "--dir", "{absent}"], "no cache entry has a key starting with 'abc'",
                 id="cache-show-unknown-key"),
    pytest.param(["cache", "rm", "", "--dir", "{cache}"], "KEY is empty", id="cache-rm-empty-key"),
    pytest.param(["cache", "rm", "zzzz", "--dir", "{cache}"], "no cache entry has a key starting",
                 id="cache-rm-unknown"),
    pytest.param(["cache", "prune", "--dir", "{cache}"], "give at least one of --older-than", id="cache-prune-nothing"),
    pytest.param(["cache", "prune", "--older-than", "7", "--dir", "{cache}"], "'7' is not a duration",
                 id="cache-prune-duration-no-unit"),
    pytest.param(["cache", "prune", "--older-than", "-1d", "--dir", "{cache}"], "'-1d' is not a duration",
                 id="cache-prune-duration-negative"),
    pytest.param(["cache", "prune", "--older-than", "7y", "--dir", "{cache}"], "e.g. 30m, 12h, 7d",
                 id="cache-prune-duration-unit"),
    pytest.param(["cache", "prune", "--max-size", "2Q", "--dir", "{cache}"], "'2Q' is not a size",
                 id="cache-prune-size-unit"),
    pytest.param(["cache", "prune", "--max-size", "-5", "--dir", "{cache}"], "'-5' is not a size",
                 id="cache-prune-size-negative"),
    pytest.param(["cache", "prune", "--keep-last", "-1", "--dir", "{cache}"], "--keep-last", id="cache-prune-keep-neg"),
    pytest.param(["cache", "clear", "--dir", "{cache}"], "refusing to clear", id="cache-clear-unconfirmed"),
    pytest.param(["cache", "export", "--dir", "{cache}"], "Missing option '--out'", id="cache-export-no-out"),
    pytest.param(["cache", "export", "--out", "{missing_dir}/a.tar.gz", "--dir", "{cache}"],
                 "directory {missing_dir} does not exist", id="cache-export-missing-dir"),
    pytest.param(["cache", "export", "--out", "{dir}", "--dir", "{cache}"], "is a directory",
                 id="cache-export-out-directory"),
    pytest.param(["cache", "export", "--out", "{dir}/a.tar.gz", "--graph", "nope", "--dir", "{cache}"],
                 "nothing to export", id="cache-export-no-match"),
    pytest.param(["cache", "import", "{junk_archive}", "--dir", "{cache}"], "not a readable gzip-compressed tar",
                 id="cache-import-junk"),
    pytest.param(["cache", "import", "{foreign_archive}", "--dir", "{cache}"], "is not under entries/",
                 id="cache-import-foreign-tar"),
    pytest.param(["cache", "import", "{evil_archive}", "--dir", "{cache}"], "has a '..' component",
                 id="cache-import-path-traversal"),
    pytest.param(["cache", "import", "{dir}", "--dir", "{cache}"], "is a directory", id="cache-import-directory"),
    pytest.param(["cache", "import", "{missing}", "--dir", "{cache}"], "does not exist", id="cache-import-missing"),
    pytest.param(["cache", "import", "--dir", "{cache}"], "Missing argument 'ARCHIVE'", id="cache-import-no-archive"),
    pytest.param(["cache", "nope"], "No such command 'nope'", id="cache-unknown-command"),
    pytest.param(["cache", "ls", "--bogus"], "No such option '--bogus'", id="cache-unknown-option"),
]

# -- warmup and generate: refused before any model is loaded, except the model-directory rows ----
_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
WARMUP = ["WARMGRAPH_CACHE_DIR={absent}", "warmup", "--model", "tiny", "--backend", "eager"]
WARMUP_DIR = ["WARMGRAPH_CACHE_DIR={absent}", "warmup", "--backend", "eager"]  # a MODEL_DIR follows
GENERATE = ["WARMGRAPH_CACHE_DIR={absent}", "generate", "--model", "tiny", "--backend", "eager", "--prompt", "hi"]
ROWS += [
    pytest.param([*WARMUP, "--block-size", "0"], "block_size is 0; --block-size must be a positive integer",
                 id="warmup-block-size-zero"),
    pytest.param([*WARMUP, "--block-size", "-64"], "block_size is -64; --block-size must be a positive integer",
                 id="warmup-block-size-negative"),
    pytest.param([*WARMUP, "--max-num-seqs", "0"], "--max-num-seqs must be a positive integer", id="warmup-seqs-zero"),
    pytest.param([*WARMUP, "--max-model-len", "-1"], "--max-model-len must be a positive integer",
                 id="warmup-len-negative"),
    pytest.param([*WARMUP, "--max-num-batched-tokens", "8"], "max_num_batched_tokens 8 is below block_size 64",
                 id="warmup-tokens-below-block"),
    pytest.param([*WARMUP, "--max-num-prefill-seqs", "0"], "--max-num-prefill-seqs must be a positive integer",
                 id="warmup-prefill-seqs-zero"),
    pytest.param([*WARMUP, "--strategy", "file"], "needs a bucket file: pass --bucket-file", id="warmup-file-no-file"),
    pytest.param([*WARMUP, "--strategy", "file", "--bucket-file", "{dir}"], "is a directory",
                 id="warmup-bucket-file-directory"),
    pytest.param([*WARMUP, "--strategy", "file", "--bucket-file", "{garbled_txt}"], "garbled.txt",
                 id="warmup-bucket-file-garbled"),
    pytest.param([*WARMUP, "--strategy", "cubic"], "'cubic' is not one of", id="warmup-unknown-strategy"),
    pytest.param([*WARMUP, "--workers", "0"], "--workers: must be at least 1", id="warmup-workers-zero"),
    pytest.param([*WARMUP, "--threads", "0"], "--threads must be from 1 to the", id="warmup-threads-zero"),
    pytest.param([*WARMUP, "--device", "cuda"], "--device cuda: no cuda device is available here",
                 id="warmup-device-cuda", marks=_CUDA),
    pytest.param(["WARMGRAPH_DEVICE=cuda", *WARMUP], "WARMGRAPH_DEVICE=cuda: no cuda device", id="warmup-env-cuda",
                 marks=_CUDA),
    pytest.param(["WARMGRAPH_DEVICE=tpu", *WARMUP], "WARMGRAPH_DEVICE=tpu: device 'tpu' is unknown",
                 id="warmup-env-unknown-device"),
    pytest.param([*WARMUP, "--device", "tpu"], "'tpu' is not one of", id="warmup-unknown-device"),
    pytest.param([*WARMUP, "--backend", "nonsense"], "backend 'nonsense' is unknown", id="warmup-unknown-backend"),
    pytest.param([*WARMUP, "--backend", "cuda_graph:aot"], "CUDA graphs need a CUDA device",
                 id="warmup-cuda-graph-on-cpu", marks=_CUDA),
    pytest.param([*WARMUP, "--backend", "cuda_graph:foo"], "not cuda_graph:foo", id="warmup-capture-over-unknown"),
    pytest.param([*WARMUP, "--backend", "aot:inductor"], "only capture backends", id="warmup-colon-not-capture"),
    pytest.param([*WARMUP, "--dtype", "int8"], "'int8' is not one of", id="warmup-bad-dtype"),
    pytest.param([*WARMUP_DIR, "{missing}"], "does not exist", id="warmup-model-missing"),
    pytest.param([*WARMUP_DIR, "{file}"], "is not a directory", id="warmup-model-is-a-file"),
    pytest.param([*WARMUP_DIR, "{dir}"], "config.json is missing", id="warmup-model-empty-dir"),
    pytest.param([*WARMUP, "{dir}"], "give MODEL_DIR or --model, not both", id="warmup-model-dir-and-name"),
    pytest.param([*WARMUP_DIR, "--model", "huge"], "'huge' is not one of", id="warmup-unknown-model"),
    pytest.param([*GENERATE, "--system", "be brief"], "--system is the system turn of a chat; add --chat",
                 id="generate-system-without-chat"),
    pytest.param([*GENERATE, "--chat-prompt", "hi"], "has no chat template", id="generate-chat-prompt-no-template"),
    pytest.param(["OMP_NUM_THREADS=abc", *GENERATE], "OMP_NUM_THREADS='abc' is not a positive integer",
                 id="generate-omp-threads-garbled"),
    pytest.param([*GENERATE, "--workers", "2"], "--workers compiles a warmup in parallel; add --warmup",
                 id="generate-workers-without-warmup"),
    pytest.param([*GENERATE, "--warmup", "--workers", "0"], "--workers: must be at least 1",
                 id="generate-warmup-workers-zero"),
    pytest.param([*GENERATE, "--chat"], "has no chat template", id="generate-chat-without-template"),
    pytest.param([*WARMUP, "--max-model-len", "1024"], "above the model's max_position_embeddings 512",
                 id="warmup-len-beyond-model"),
    pytest.param([*GENERATE, "--temperature", "nan"], "temperature is nan", id="generate-temperature-nan"),
    pytest.param([*GENERATE, "--temperature", "-1"], "--temperature must be a finite number >= 0",
                 id="generate-temperature-negative"),
    pytest.param([*GENERATE, "--top-p", "0"], "--top-p must be in (0, 1]", id="generate-top-p-zero"),
    pytest.param([*GENERATE, "--max-tokens", "0"], "--max-tokens must be at least 1", id="generate-max-tokens-zero"),
    pytest.param(["generate", "--backend", "eager"], "nothing to generate: give --prompt TEXT or --chat-prompt TEXT",
                 id="generate-no-prompt"),
    pytest.param([*GENERATE, "--block-size", "0"], "--block-size must be a positive integer",
                 id="generate-block-size-zero"),
    pytest.param([*WARMUP, "--threads", "100000"], "--threads must be from 1 to the", id="warmup-threads-huge"),
    pytest.param([*GENERATE, "--seed", str(2**64)], "--seed must be an integer from 0 to 2**64 - 1",
                 id="generate-seed-huge"),
    pytest.param([*WARMUP, "--bucket-file", "{buckets_txt}"], "add --strategy file", id="warmup-file-no-strategy"),
    pytest.param([*WARMUP, "--max-num-seqs", "100000000000"], "lower --max-num-seqs or --max-model-len",
                 id="warmup-kv-cache-beyond-memory"),
]

# -- convert-gguf: refused before anything is dequantised or written ---------------------------
# (tests/test_gguf_convert.py covers the rest with synthetic GGUF files)
ROWS += [
    pytest.param(["convert-gguf", "{missing}", "{dir}/out"], "GGUF file {missing} does not exist",
                 id="convert-gguf-missing-file"),
    pytest.param(["convert-gguf", "{dir}", "{dir}/out"], "{dir} is not a file", id="convert-gguf-directory"),
    pytest.param(["convert-gguf", "{file}", "{dir}/out"], "{file} is not a readable GGUF file",
                 id="convert-gguf-not-gguf"),
    pytest.param(["convert-gguf", "{gguf}", "{cache}"], "OUT_DIR {cache} exists; give a new directory",
                 id="convert-gguf-out-dir-not-empty"),
    pytest.param(["convert-gguf", "{gguf}", "{dir}"], "OUT_DIR {dir} exists; give a new directory",
                 id="convert-gguf-out-dir-empty"),  # rename(2) would replace it: cwd, mount point
    pytest.param(["convert-gguf", "{gguf}", "{file}"], "OUT_DIR {file} exists; give a new directory",
                 id="convert-gguf-out-dir-is-file"),
    pytest.param(["convert-gguf", "{file}", "{dir}/out", "--dtype", "int8"], "'int8' is not one of",
                 id="convert-gguf-bad-dtype"),
    pytest.param(["convert-gguf", "{file}"], "Missing argument 'OUT_DIR'", id="convert-gguf-no-out-dir"),
    pytest.param(["convert-gguf"], "Missing argument 'GGUF_FILE'", id="convert-gguf-no-arguments"),
]

# -- quant, and the engine's FP8 settings: refused before a model loads -------------------------
ROWS += [
    pytest.param(["quant", "calibrate", "{missing}", "{dir}/out"], "checkpoint directory {missing} does not exist",
                 id="quant-calibrate-missing-model"),
    pytest.param(["quant", "calibrate", "{missing}", "{dir}/out", "--scale-method", "fast"],
                 "unknown scale method 'fast'", id="quant-calibrate-unknown-method"),
    pytest.param(["quant", "calibrate", "{missing}", "{dir}/out", "--scale-method", "maxabs_pcs_pow2"],
                 "not supported for runtime scale patching", id="quant-calibrate-per-channel"),
    pytest.param(["quant", "calibrate", "{missing}", "{dir}", ], "OUT_DIR {dir} already exists",
                 id="quant-calibrate-out-dir-exists"),
    pytest.param(["quant", "calibrate", "{missing}", "{dir}/out", "--calib", "{missing}"],
                 "calibration file {missing} does not exist", id="quant-calibrate-missing-calib"),
    pytest.param(["quant", "calibrate", "{missing}", "{dir}/out", "--scales-from", "inc", "{missing}"],
                 "no such measurement file", id="quant-calibrate-missing-inc-file"),
    pytest.param(["quant", "inspect", "{missing}"], "checkpoint directory {missing} does not exist",
                 id="quant-inspect-missing"),
    pytest.param(["quant", "inspect", "{dir}", "--trivial-variants", "-1"], "--trivial-variants",
                 id="quant-inspect-negative-cap"),
    pytest.param(["RUNTIME_SCALE_PATCHING=maybe", *GENERATE], "RUNTIME_SCALE_PATCHING='maybe' is not one of",
                 id="generate-bad-runtime-scale-patching"),
    pytest.param(["PT_HPU_H2D_TRIVIAL_SCALES_MODE=7", *GENERATE], "PT_HPU_H2D_TRIVIAL_SCALES_MODE='7' is not one of",
                 id="generate-bad-trivial-mode"),
    pytest.param(["WARMGRAPH_FP8_MATH=fast", *GENERATE], "FP8 math 'fast' (WARMGRAPH_FP8_MATH, --fp8-math)",
                 id="generate-bad-fp8-math"),
    pytest.param([*GENERATE, "--trivial-variants", "-1"], "(--trivial-variants) must be an integer >= 0",
                 id="generate-negative-variant-cap"),
]


def _tar(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def _gguf(path: Path) -> str:
    """The smallest valid llama GGUF (one layer, hidden size 8, a four-token vocabulary), for
    the convert-gguf rows that must get past reading the file."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch="llama")
    for key, value in (("block_count", 1), ("context_length", 16), ("embedding_length", 8),
                       ("feed_forward_length", 16), ("attention.head_count", 2)):
        writer.add_uint32(f"llama.{key}", value)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "ab", "<s>"])
    writer.add_token_merges(["a b"])
    shapes = {"token_embd": (4, 8), "output_norm": (8,), "blk.0.attn_norm": (8,), "blk.0.ffn_norm": (8,),
              "blk.0.attn_q": (8, 8), "blk.0.attn_k": (8, 8), "blk.0.attn_v": (8, 8), "blk.0.attn_output": (8, 8),
              "blk.0.ffn_gate": (16, 8), "blk.0.ffn_up": (16, 8), "blk.0.ffn_down": (8, 16)}
    for name, shape in shapes.items():
        writer.add_tensor(f"{name}.weight", np.ones(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    """Everything a row may name, made fresh in tmp_path (the keys are the ``{name}`` placeholders)."""
    def write(name: str, data: str | bytes) -> str:
        p = tmp_path / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        return str(p)

    (tmp_path / "dir").mkdir()
    trace = "ContextTokens,GeneratedTokens\n" + "".join(f"{100 + 37 * i},{5 + i % 50}\n" for i in range(200))
    cache = GraphCache(tmp_path / "cache")
    key = make_key(graph={"name": "decode"}, bucket=(1, 128), backend={"backend": "aot"}, device={"type": "cpu"})

    def entry(d: Path) -> list[str]:
        (d / "graph.bin").write_bytes(b"g" * 100)
        return ["graph.bin"]

    with cache.lock(key.hash):
        cache.store(key, entry, 0.1)
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    os.chmod(unsafe, 0o770)
    return {
        "dir": str(tmp_path / "dir"),
        "file": write("plain_file", "x"),
        "missing": str(tmp_path / "missing"),
        "missing_csv": str(tmp_path / "missing.csv"),
        "missing_dir": str(tmp_path / "no_such_dir"),
        "trace": write("trace.csv", trace),
        "empty_csv": write("empty.csv", ""),
        "binary_csv": write("binary.csv", b"\xff\xfe\x00 not text"),
        "negative_csv": write("negative.csv", "ContextTokens\n-5\n"),
        "buckets_txt": write("buckets.txt", "(1, [128, 256], 0)\n(8, 1, [64, 128])\n"),
        "garbled_txt": write("garbled.txt", "hello there\n"),
        "binary_txt": write("binary.txt", b"\xff\xfe(1, 128, 0)\n"),
        "bad_yaml": write("bad.yaml", "format: warmgraph-buckets/1\nbuckets: [\n"),
        "cube": write("cube.txt", "(range(1000), range(1000), range(1000))\n"),
        "cache": str(cache.root),
        "absent": str(tmp_path / "absent_cache"),
        "unsafe": str(unsafe),
        "junk_archive": write("junk.tar.gz", "not an archive"),
        "foreign_archive": _tar(tmp_path / "foreign.tar.gz", {"notes/readme.txt": b"hello"}),
        "evil_archive": _tar(tmp_path / "evil.tar.gz", {"../../evil": b"x"}),
        "gguf": _gguf(tmp_path / "small.gguf"),
    }


def _fill(text: str, paths: dict[str, str]) -> str:
    for name, value in paths.items():
        text = text.replace("{" + name + "}", value)
    return text


@pytest.mark.parametrize(("argv", "fragment"), ROWS)
def test_one_line_error(
    capsys: Capsys, monkeypatch: pytest.MonkeyPatch, paths: dict[str, str], argv: list[str], fragment: str
) -> None:
    for name in list(os.environ):
        if name.startswith("VLLM_"):
            monkeypatch.delenv(name)
    args = [_fill(a, paths) for a in argv]
    while args and "=" in args[0] and args[0].split("=", 1)[0].isupper():
        name, value = args.pop(0).split("=", 1)
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # nobody at a terminal to confirm anything
    start = time.perf_counter()
    code, out, err = run(capsys, *args)
    elapsed = time.perf_counter() - start
    assert_one_line_error(code, out, err, _fill(fragment, paths))
    assert elapsed < ROW_SECONDS, f"took {elapsed:.1f} s to refuse: {err}"


def test_table_covers_every_command() -> None:
    """Each buckets and cache subcommand, and each other command, has at least one row (new
    commands and subcommands need one too)."""
    from warmgraph.cli.buckets import buckets
    from warmgraph.cli.cache import cache
    from warmgraph.cli.main import cli
    from warmgraph.cli.quant import quant

    commands = cli.list_commands(click.Context(cli))  # imported on use: listed, not in cli.commands
    argvs = [p.values[0] for p in ROWS]
    for group, name in ((buckets, "buckets"), (cache, "cache"), (quant, "quant")):
        for sub in group.commands:
            assert any(a[:2] == [name, sub] or (a and "=" in a[0] and a[1:3] == [name, sub]) for a in argvs), sub
    # Every top-level command (warmup, generate, convert-gguf, ...), found rather than listed.
    assert {"warmup", "generate", "convert-gguf", "buckets", "cache"} <= set(commands)
    for command in commands:
        assert cli.get_command(click.Context(cli), command) is not None, command
        assert any(command in a[:3] for a in argvs), command
    assert len(ROWS) >= 30
