"""semcon: federated fine-tuning of LLMs by semantic consensus."""

import os

# Offline unless the user says otherwise (HF_HUB_OFFLINE=0), set before anything imports the Hugging Face libraries:
# huggingface_hub reads it once, at import, and a mistyped model name must not become calls to the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
