"""depthtune: distil what a language model does best into something cheaper.

The Python API (depthtune.api) is imported on first use, so `import depthtune` stays light:

    import depthtune
    result = depthtune.run({"data": {"max_train_prompts": 24}}, run_dir="runs/nb")
"""

__version__ = "0.2.0"
API = ("run", "compare", "sweep", "ablate", "stages", "export_gguf", "RunResult", "CompareResult", "AblateResult",
       "SweepResult", "as_config")


def __getattr__(name):
    if name in API:
        from . import api

        return getattr(api, name)
    if name in ("RunConfig", "load_config"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module 'depthtune' has no attribute {name!r}")
