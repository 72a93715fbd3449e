"""Generation backends: ``hf`` (in-process transformers), ``vllm`` (offline engine), ``openai`` (HTTP server).

Import the concrete backends from their modules (``etagent.backends.hf`` ...): ``vllm`` is
imported lazily and only when that backend is used.
"""

from etagent.backends.base import Completion, GenerationBackend, SamplingParams

__all__ = ["Completion", "GenerationBackend", "SamplingParams"]
