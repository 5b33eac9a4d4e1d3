"""energydsl: write an energy model as a spec, get its free energy, score-matching
objective and Gibbs conditionals derived symbolically and emitted as a PyTorch module."""

__version__ = "0.1.0"
