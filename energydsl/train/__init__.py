"""The training runtime: objectives, samplers, AIS, data, the training loop, reports."""
