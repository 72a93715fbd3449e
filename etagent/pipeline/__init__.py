"""The end-to-end ET-Agent pipeline: world -> seed -> flywheel -> ase -> rl -> eval -> report."""
