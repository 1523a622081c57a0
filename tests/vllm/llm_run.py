"""Run vLLM's ``LLM`` once, as a test's subprocess, and print one JSON line on stdout.

Argument: a JSON spec ``{"model", "prompts", "max_tokens", "compilation_config"?}``. Output:
the greedy token ids of every prompt and, when warmgraph's backend ran in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), its counters and builds. vLLM starts processes of its
own: the work is under ``__main__``.
"""

import json
import sys


def main() -> None:
    spec = json.loads(sys.argv[1])
    from vllm import LLM, SamplingParams

    kwargs = {}
    if spec.get("compilation_config") is not None:
        kwargs["compilation_config"] = spec["compilation_config"]
    llm = LLM(model=spec["model"], max_model_len=128, max_num_seqs=4, dtype="float32", seed=0, **kwargs)
    params = SamplingParams(max_tokens=spec["max_tokens"], temperature=0.0)
    outputs = llm.generate(spec["prompts"], params, use_tqdm=False)
    from warmgraph.integrations.vllm import piecewise
    from warmgraph.integrations.vllm.function import live_functions

    functions = live_functions()
    fn = functions[0] if functions else None
    print(json.dumps({
        "tokens": [list(o.outputs[0].token_ids) for o in outputs],
        "counters": dict(fn.counters) if fn else None,
        "streaming": fn.streaming if fn else None,
        "weights_source": fn.weights.source if fn else None,
        "sources": [b.source for b in fn.builds] if fn else None,
        "buckets": [list(b.bucket) for b in fn.builds] if fn else None,
        "piecewise": dict(piecewise.COUNTERS) if any(piecewise.COUNTERS.values()) else None,
        "pieces": [len(r.names) for r in fn.regions.regions] if fn else None,
    }), flush=True)


if __name__ == "__main__":
    main()
