"""CloudToLocalLLM bridge."""
