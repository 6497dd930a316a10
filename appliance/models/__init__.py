"""The model store under <state_dir>/models (manifests, pull, import, delete) and the embedded default model."""
