"""The Hydra configs, installed with the package as ``adarem.configs`` (see adarem.cli.CONFIG_DIR)."""
