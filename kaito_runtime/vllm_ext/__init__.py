"""Code that runs inside vLLM's own API server process, handed to it through documented flags.

vLLM imports these by dotted path (``--middleware kaito_runtime.vllm_ext.rate_limit.RateLimitMiddleware``).
They import nothing else from kaito_runtime, so loading one costs vLLM nothing but this package,
and they never patch vLLM: they see only the ASGI scope, prometheus_client's registry, and the
variables the launcher sets.
"""
