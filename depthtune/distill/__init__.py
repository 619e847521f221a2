"""`depthtune compare`: teacher -> student distillation, built on the stages.

losses (pure divergences, dense, top-k and chunked) -> trainer (HF Trainer with those losses)
students (given or pruned), targets (what the student learns), ensemble (several teachers'
averaged distributions) -> compare (the four models) -> decide (report and decision).
"""
