"""Running a model: hardware probe, decoding, LLM clients, the tool protocol, sandbox and retrieval."""
