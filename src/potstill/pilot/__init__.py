"""Pilot: before any training, the untrained student against the teacher on a sample of inputs."""
