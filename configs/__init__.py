"""Model configs, one file per model: `--config=NAME` loads NAME.py's get_config()."""
