"""Integrations with serving engines: vLLM (``integrations.vllm``)."""
