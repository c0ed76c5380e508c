"""Plain ML code for CompX (model loading, generation, DPO training); never imports Django."""

import warnings

# TRL 1.16 and PEFT 0.21 still read transformers 5's deprecated `is_gradient_checkpointing`: the warning is theirs
# to act on, and it came back at every model load, in every run's and evaluation's log.
warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated", category=FutureWarning)
