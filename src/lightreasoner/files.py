"""The names of the files one stage writes and others read (the run, the report).

Kept apart from the stages, so that what reads a stage's output (the report, the arms'
builders) finds it without importing the stage and what it loads (torch, peft, the Trainer).
"""

TRAIN_SUMMARY = "train_summary.json"
"""What ``train`` writes in the adapter folder when it has finished."""

SOLUTIONS = "solutions.jsonl"
"""The sampled and graded solutions ``sft`` writes in the adapter folder (cut into work units)."""

SFT_SUMMARY = "sft_summary.json"
"""What ``sft`` writes in the adapter folder when it has finished."""

EFFECT_FILE = "effect.json"
"""What the ``effect`` stage of a run writes in each tuned arm's folder."""
