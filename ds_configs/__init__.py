"""The DeepSpeed recipes (JSON) the trainers default to: the paper's GPU recipes and the small fp32
CPU configs. A package only so that a built wheel carries them (trainer.engine.config reads them
from here, wherever the package is installed)."""
