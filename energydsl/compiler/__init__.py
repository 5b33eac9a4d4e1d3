"""The compiler: spec text -> a PyTorch module's source, stage by stage (see driver)."""
