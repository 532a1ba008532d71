"""LlamaBoard (``llamafactory-cli webui``): the PRISM stages in the Train tab — components, run mapping and
checks, and their text in every language the board offers."""
