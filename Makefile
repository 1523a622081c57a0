# Two commands a new user needs: `make demo` and `make test`. Both create (or reuse) .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TRACE  ?= ../shared/workloads/azure_llm_inference_2023_conv.csv

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/warmgraph buckets plan --strategy exponential --max-num-seqs 256 --max-num-prefill-seqs 1 \
	  --block-size 128 --max-num-batched-tokens 8192 --max-model-len 32768 --num-blocks 4127
	$(VENV)/bin/warmgraph buckets simulate --trace $(TRACE) --column ContextTokens --strategy fitted \
	  --step 128 --max 8192 --limit 12 --compare exponential,linear,padding_aware,fitted --plot demo-buckets.png
	$(VENV)/bin/warmgraph buckets fit --trace $(TRACE) --column ContextTokens --step 128 --max 8192 \
	  --max-buckets 12 --out demo-buckets.yaml
	$(VENV)/bin/warmgraph buckets simulate --trace $(TRACE) --column ContextTokens --strategy file --file demo-buckets.yaml

test: $(STAMP)
	$(VENV)/bin/ruff check warmgraph tests bench
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/bucketing.py

clean:
	rm -rf $(VENV) demo-buckets.png demo-buckets.yaml
