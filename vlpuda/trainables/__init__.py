"""Everything one trial runs: model loading, CMKD losses, RST, data, the training loop, and the
Ray Train / Tune glue that runs the loop inside a search."""
