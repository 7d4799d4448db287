"""llm_bridge: see README."""
