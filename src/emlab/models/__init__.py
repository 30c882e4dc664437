"""Models: the embedded default model, Hugging Face ids and local directories."""
