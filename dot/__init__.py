"""dot: Diffusion of Thoughts, the backbone-agnostic pipeline (tasks, data, tokenization,
example building, batching, scoring, training and evaluation loops)."""
__version__ = "0.1.0"
