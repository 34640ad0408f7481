"""The chat turn: persona resolution, prompt assembly, the pipeline, the answer on its way, conversations,
leases and stream recordings."""
