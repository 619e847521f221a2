"""`depthtune run`, one module per pipeline stage (the layout is the data flow).

    prepare -> generate -> score -> select -> train -> merge -> evaluate -> report

Each stage reads the run directory and writes its own folder there, finished exactly when its
manifest.json exists; pipeline.py runs them in order. Stages use only the core modules
(depthtune/*.py) and the samplers in depthtune.backends.
"""
